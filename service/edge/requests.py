"""Decoding classify requests from invoke bodies and pub/sub events.

Three body forms, told apart by their bytes rather than trusted content types (`dapr
invoke --data-file` sends `application/json` whatever the file is):
- protobuf `ClassifyRequest`: content type `application/x-protobuf`, or an Any-packed message;
- JSON `{"image_base64": ..., "model": ..., "top_k": ...}`: the body starts with `{`
  (no image format does); `image_url` only when an allowlist is configured; a field that is
  an empty string (or null) is absent, as Tencent SCF's tutorial sends `"image_url": ""`;
  an API-gateway event (`requestContext`, `headers`, `body` as a string, maybe base64 with
  `isBase64Encoded`), as SCF and AWS Lambda hand to functions, is unwrapped: its `body` is
  the request, in any of these forms;
- anything else: the raw image bytes, with `model` and `top_k` from the query string.

A JSON request may also carry a frame's place in a stream (`stream_id`, `seq`, `captured_at`,
docs/streams.md): results carry them back.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from ..errors import ClassifierError, invalid_argument
from ..stores.base import check_name
from .classifier_pb2 import ClassifyRequest as ClassifyRequestProto

PROTOBUF_CONTENT_TYPES = ("application/x-protobuf", "application/protobuf")
PROTO_TYPE_NAME = "classifier.v1.ClassifyRequest"
JSON_FIELDS = ("image_base64", "image_url", "model", "top_k")
# Keys of an API-gateway event (Tencent SCF, AWS Lambda proxy integration) besides `body`.
GATEWAY_KEYS = ("requestContext", "headers", "httpMethod", "isBase64Encoded")


STREAM_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class StreamFields:
    """Where a frame sits in a stream, as the publisher said; each None when not given."""

    stream_id: str | None = None
    seq: int | None = None
    captured_at: float | None = None  # Unix time in seconds

    def to_dict(self) -> dict[str, Any]:
        """The fields that were given, as a result carries them back."""
        fields = {"stream_id": self.stream_id, "seq": self.seq, "captured_at": self.captured_at}
        return {key: value for key, value in fields.items() if value is not None}


NO_STREAM = StreamFields()


@dataclass(frozen=True)
class ClassifyRequest:
    image: bytes
    model: str | None = None  # None: the service's default model
    top_k: int | None = None  # None: the default
    protobuf: bool = False  # answer in protobuf
    stream: StreamFields = NO_STREAM


@dataclass(frozen=True)
class ImageFetcher:
    """Fetches `image_url`s, only under the allowed URL prefixes."""

    allowed_prefixes: tuple[str, ...] = ()
    max_bytes: int = 16 << 20
    timeout_s: float = 5.0

    def fetch(self, url: str) -> bytes:
        if not self.allowed_prefixes:
            raise invalid_argument(
                "image_url is not accepted by this service: send the image in image_base64 "
                "(or configure CLASSIFIER_IMAGE_URL_ALLOWLIST)"
            )
        if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not any(
            url.startswith(prefix) for prefix in self.allowed_prefixes
        ):
            raise invalid_argument(f"image_url {url!r} is not under an allowed prefix")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:  # allowlisted above
                data = response.read(self.max_bytes + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise invalid_argument(f"image_url {url!r} could not be fetched: {exc}") from exc
        if len(data) > self.max_bytes:
            raise invalid_argument(f"image_url {url!r} is larger than {self.max_bytes} bytes")
        return data


def decode_body(
    data: bytes, content_type: str, query: str = "", fetcher: ImageFetcher | None = None
) -> ClassifyRequest:
    """An invoke body or a pub/sub event's data, in any of the three forms."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in PROTOBUF_CONTENT_TYPES:
        return decode_protobuf(data)
    if data.lstrip()[:1] == b"{":
        return decode_json(data, fetcher or ImageFetcher())
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    model = params.get("model", [None])[-1]
    top_k = params.get("top_k", [None])[-1]
    return ClassifyRequest(
        image=data,
        model=check_name(model) if model else None,
        top_k=_int_param("top_k", top_k) if top_k else None,  # `top_k=` is no value, as "" in JSON
    )


def check_event_data(data: bytes, content_type: str) -> None:
    """Refuse a pub/sub event's data that daprd's CloudEvent envelope emptied or corrupted, and say
    why, rather than classifying what is left or failing with a bare "not an image".

    daprd keeps bytes only for application/octet-stream (data_base64) and JSON; it stores other
    types as a UTF-8 string (invalid bytes become U+FFFD) and delivers them empty unless they
    are text/* or application/xml (dapr pkg/runtime/pubsub/subscriptions.go:354-385)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    send = 'publish images as application/octet-stream, or JSON {"image_base64": ...}'
    if not data:
        carried = media_type in ("", "application/octet-stream", "application/json", "application/xml")
        if carried or media_type.startswith("text/"):
            raise invalid_argument("the event has no data")
        raise invalid_argument(
            f"the event's data is empty: daprd delivers no data for content type {content_type!r} "
            f"(only application/octet-stream, JSON and text keep it); {send}"
        )
    if (media_type.startswith("text/") or media_type == "application/xml") and b"\xef\xbf\xbd" in data:
        raise invalid_argument(
            f"the event's data was corrupted: published as {content_type!r}, which daprd stores as "
            f"a UTF-8 string, replacing the image's non-UTF-8 bytes with U+FFFD; {send}"
        )
    if media_type == "application/json" and data.lstrip()[:1] == b'"':
        raise invalid_argument(
            "the event's data is a JSON string, not an object: daprd stores a body published as "
            "application/json that is not JSON (as `dapr publish --data-file IMAGE` sends it) as a "
            f"string, which corrupts image bytes; {send}"
        )


def check_batch_entry(data: bytes, content_type: str) -> None:
    """Refuse an entry of a bulk delivery that daprd emptied: daprd 1.18 builds a batch's entries
    from the CloudEvent's `data` only, never its `data_base64` (dapr pkg/runtime/pubsub/
    subscriptions.go:485-503), so every binary event arrives without its bytes."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    # daprd keeps the data of JSON and string (text) types.
    kept = media_type in ("application/json", "application/xml") or media_type.endswith("+json")
    if not data and not (kept or media_type.startswith("text/")):
        raise invalid_argument(
            f"the event's data is empty: daprd's bulk delivery leaves out the bytes of binary events "
            f"({content_type or 'no content type'}, sent as data_base64); publish images as JSON "
            '{"image_base64": ...} to a service with bulk subscription on, or serve with '
            "CLASSIFIER_BULK_SUBSCRIBE=off"
        )


def decode_protobuf(data: bytes) -> ClassifyRequest:
    message = ClassifyRequestProto()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise invalid_argument(f"the body is not a valid {PROTO_TYPE_NAME} protobuf: {exc}") from exc
    return from_proto(message)


def from_proto(message: ClassifyRequestProto) -> ClassifyRequest:
    return ClassifyRequest(
        image=message.image,
        model=check_name(message.model) if message.model else None,
        top_k=message.top_k or None,
        protobuf=True,
    )


def decode_json(data: bytes, fetcher: ImageFetcher, *, envelope_allowed: bool = True) -> ClassifyRequest:
    try:
        body: Any = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid_argument(f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # deeply nested arrays or objects
        raise invalid_argument("the JSON body is nested too deeply") from exc
    if not isinstance(body, dict):
        raise invalid_argument("the JSON body must be an object")
    if envelope_allowed and "body" in body and any(key in body for key in GATEWAY_KEYS):
        return decode_gateway_event(body, fetcher)
    # An empty string is no value: callers send the field they do not use as "".
    fields = {key: value for key, value in body.items() if value is not None and value != ""}
    if ("image_base64" in fields) == ("image_url" in fields):
        raise invalid_argument(
            f"give exactly one of image_base64 and image_url (fields: {', '.join(JSON_FIELDS)})"
        )
    if "image_base64" in fields:
        image = _base64_image(fields["image_base64"])
    else:
        if not isinstance(fields["image_url"], str):
            raise invalid_argument("image_url must be a string")
        image = fetcher.fetch(fields["image_url"])
    model = fields.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid_argument("model must be a string")
    top_k = fields.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
        raise invalid_argument(f"top_k must be an integer, got {json.dumps(top_k)[:40]}")
    return ClassifyRequest(
        image=image, model=check_name(model) if model else None, top_k=top_k, stream=stream_fields(fields)
    )


def stream_fields(body: dict[str, Any]) -> StreamFields:
    """A JSON request's `stream_id`, `seq` and `captured_at`; a bad value is invalid_argument."""
    stream_id, seq, captured_at = body.get("stream_id"), body.get("seq"), body.get("captured_at")
    if stream_id is not None and not (isinstance(stream_id, str) and STREAM_ID.fullmatch(stream_id)):
        raise invalid_argument(
            f"stream_id must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {json.dumps(stream_id)[:40]}"
        )
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63):
        raise invalid_argument(f"seq must be an integer from 0 to 2**63-1, got {json.dumps(seq)[:40]}")
    if captured_at is not None and (
        isinstance(captured_at, bool)
        or not isinstance(captured_at, int | float)
        or not math.isfinite(captured_at)
        or captured_at < 0
    ):
        raise invalid_argument(
            f"captured_at must be a Unix time in seconds (a number >= 0), got {json.dumps(captured_at)[:40]}"
        )
    return StreamFields(stream_id, seq, None if captured_at is None else float(captured_at))


def stream_fields_of(data: bytes) -> StreamFields:
    """The valid stream fields of an event that failed (for its error result); best effort."""
    try:
        body = json.loads(data) if data.lstrip()[:1] == b"{" else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return NO_STREAM
    if not isinstance(body, dict):
        return NO_STREAM
    fields: dict[str, Any] = {}
    for key in ("stream_id", "seq", "captured_at"):
        try:
            fields.update(stream_fields({key: body.get(key)}).to_dict())
        except ClassifierError:
            continue  # a bad value is not echoed: the error says what was wrong with it
    return StreamFields(**fields)


def decode_gateway_event(event: dict[str, Any], fetcher: ImageFetcher) -> ClassifyRequest:
    """An API-gateway event: its `body` (a string, base64 if `isBase64Encoded`) is the request, a
    JSON one or the raw image with `model` and `top_k` from its query string parameters. One
    level only: a body that is itself an event is refused as a request without an image."""
    inner = event["body"]
    if not isinstance(inner, str):
        raise invalid_argument("the API-gateway event's body must be a string")
    data = _base64_image(inner) if event.get("isBase64Encoded") is True else inner.encode("utf-8")
    if data.lstrip()[:1] == b"{":
        return decode_json(data, fetcher, envelope_allowed=False)
    query = event.get("queryStringParameters") or event.get("queryString") or {}
    if not isinstance(query, dict):
        raise invalid_argument("the API-gateway event's query string parameters must be an object")
    return decode_body(data, "", urllib.parse.urlencode({k: str(v) for k, v in query.items()}), fetcher)


def _base64_image(value: Any) -> bytes:
    if not isinstance(value, str):
        raise invalid_argument("image_base64 must be a string")
    if value.startswith("data:") and "," in value:  # a data URL: data:image/jpeg;base64,....
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_argument(f"image_base64 is not valid base64: {exc}") from exc


def _int_param(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise invalid_argument(f"{name} must be an integer, got {value[:40]!r}") from exc
