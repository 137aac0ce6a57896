"""Classify requests decoded from invoke bodies and event data (service/edge/requests.py), in process:
every malformed field refused with its own message, and `image_url` fetched from a real HTTP server on
loopback only under an allowed prefix, within its size limit.

tests/test_seeds.py checks the request shapes the seeds send, tests/test_hardening_properties.py that any
input gets an answer; these pin each refusal's reason.
"""

from __future__ import annotations

import base64
import http.server
import json
from collections.abc import Iterator

import pytest
from conftest import serving

from service.edge.classifier_pb2 import ClassifyRequest as ClassifyRequestProto
from service.edge.requests import ImageFetcher, decode_body
from service.errors import ClassifierError, ErrorKind

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # the bytes are passed on as they are
IMAGE_BASE64 = base64.b64encode(IMAGE).decode()


def refusal(body: bytes | str, content_type: str = "application/json", **kwargs: object) -> str:
    data = body.encode() if isinstance(body, str) else body
    with pytest.raises(ClassifierError) as failed:
        decode_body(data, content_type, **kwargs)  # type: ignore[arg-type]
    assert failed.value.kind == ErrorKind.INVALID_ARGUMENT
    return failed.value.message


def test_a_json_body_gives_its_image_model_and_top_k() -> None:
    body = json.dumps({"image_base64": IMAGE_BASE64, "model": "birds", "top_k": 3})
    request = decode_body(body.encode(), "application/json")
    assert (request.image, request.model, request.top_k, request.protobuf) == (IMAGE, "birds", 3, False)
    spaced = {"image_base64": f"data:image/png;base64,{IMAGE_BASE64[:20]}\n {IMAGE_BASE64[20:]}"}
    assert (
        decode_body(b"  \n" + json.dumps(spaced).encode(), "text/plain").image == IMAGE
    )  # a data URL, wrapped


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"image_base64": 5}', "image_base64 must be a string"),
        ('{"image_url": 5}', "image_url must be a string"),
        (json.dumps({"image_base64": IMAGE_BASE64, "model": 7}), "model must be a string"),
        (json.dumps({"image_base64": IMAGE_BASE64, "top_k": "3"}), 'top_k must be an integer, got "3"'),
        (json.dumps({"image_base64": IMAGE_BASE64, "top_k": True}), "top_k must be an integer, got true"),
        (json.dumps({"image_base64": IMAGE_BASE64, "top_k": 2.5}), "top_k must be an integer, got 2.5"),
        ('{"a": ' * 100_000, "the JSON body is nested too deeply"),
    ],
)
def test_a_malformed_json_field_is_refused_with_its_reason(body: str, message: str) -> None:
    assert refusal(body) == message


def test_bytes_that_are_not_json_or_base64_are_refused_with_the_parsers_reason() -> None:
    assert refusal("{not json").startswith("the body is not valid JSON: ")
    assert refusal(b"{\xff}").startswith("the body is not valid JSON: ")
    assert refusal('{"image_base64": "abc*"}').startswith("image_base64 is not valid base64: ")
    assert refusal(json.dumps({"image_base64": IMAGE_BASE64, "model": "../etc"})).startswith(
        "invalid name '../etc'"
    )


def test_a_body_not_starting_with_a_brace_is_a_raw_image() -> None:
    request = decode_body(b"[1, 2]", "application/json")  # JSON, but no request object: image bytes
    assert (request.image, request.model, request.top_k) == (b"[1, 2]", None, None)


def test_a_raw_image_takes_its_model_and_top_k_from_the_query_string() -> None:
    request = decode_body(IMAGE, "image/png", "model=birds&top_k=2&model=mobilenet")
    assert (request.image, request.model, request.top_k) == (IMAGE, "mobilenet", 2)  # the last one counts
    assert refusal(IMAGE, "image/png", query="top_k=two") == "top_k must be an integer, got 'two'"
    assert refusal(IMAGE, "image/png", query="model=a%20b").startswith("invalid name 'a b'")


def test_a_protobuf_body_is_decoded_or_refused() -> None:
    message = ClassifyRequestProto(image=IMAGE, model="birds", top_k=4)
    for content_type in ("application/x-protobuf", "Application/Protobuf; charset=binary"):
        request = decode_body(message.SerializeToString(), content_type)
        assert (request.image, request.model, request.top_k, request.protobuf) == (IMAGE, "birds", 4, True)
    unset = decode_body(ClassifyRequestProto(image=IMAGE).SerializeToString(), "application/x-protobuf")
    assert (unset.model, unset.top_k) == (None, None)
    assert refusal(b"\xff\xff\xff", "application/x-protobuf").startswith(
        "the body is not a valid classifier.v1.ClassifyRequest protobuf: "
    )


def test_a_gateway_events_query_string_parameters_must_be_an_object() -> None:
    event = {"requestContext": {}, "body": "raw image", "queryStringParameters": ["model", "birds"]}
    assert refusal(json.dumps(event)) == "the API-gateway event's query string parameters must be an object"
    event = {"headers": {}, "body": "raw image", "queryString": {"model": "birds", "top_k": 1}}
    request = decode_body(json.dumps(event).encode(), "application/json")
    assert (request.image, request.model, request.top_k) == (b"raw image", "birds", 1)
    not_gateway = {"body": "x", "image_base64": IMAGE_BASE64}  # `body` alone is no event
    assert decode_body(json.dumps(not_gateway).encode(), "application/json").image == IMAGE


class Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        size = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/bytes/") else -1
        if size < 0:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(b"x" * size)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def images_url() -> Iterator[str]:
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def test_an_image_url_under_an_allowed_prefix_is_fetched_up_to_its_limit(images_url: str) -> None:
    fetcher = ImageFetcher((f"{images_url}/bytes/",), max_bytes=100)
    body = json.dumps({"image_url": f"{images_url}/bytes/100", "model": "birds"}).encode()
    request = decode_body(body, "application/json", fetcher=fetcher)
    assert (request.image, request.model) == (b"x" * 100, "birds")
    assert fetcher.fetch(f"{images_url}/bytes/0") == b""
    with pytest.raises(ClassifierError, match=r"bytes/101' is larger than 100 bytes$"):
        fetcher.fetch(f"{images_url}/bytes/101")


def test_an_image_url_elsewhere_or_failing_is_refused_with_its_reason(images_url: str) -> None:
    fetcher = ImageFetcher((f"{images_url}/bytes/", "file:///"), max_bytes=100, timeout_s=10)
    for url in (f"{images_url}/other/1", "file:///etc/passwd", f"{images_url}/byte"):
        with pytest.raises(ClassifierError) as failed:
            fetcher.fetch(url)
        assert failed.value.message == f"image_url {url!r} is not under an allowed prefix"
    wide = ImageFetcher((images_url,))
    with pytest.raises(ClassifierError, match=r"/missing' could not be fetched: HTTP Error 404"):
        wide.fetch(f"{images_url}/missing")
    with pytest.raises(ClassifierError) as failed:
        ImageFetcher().fetch(f"{images_url}/bytes/1")
    assert failed.value.message == (
        "image_url is not accepted by this service: send the image in image_base64 "
        "(or configure CLASSIFIER_IMAGE_URL_ALLOWLIST)"
    )
