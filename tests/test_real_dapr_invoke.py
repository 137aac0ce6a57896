"""Service invocation through the real daprd: what callers send, and what they get back.

Callers reach `classify` the ways a Dapr user would: daprd's HTTP invoke API (as `dapr invoke`
and curl do, on the app's own sidecar, and from a caller's sidecar of its own, over daprd's
internal gRPC), the SDK's `DaprClient` with DAPR_API_METHOD_INVOCATION_PROTOCOL=grpc (the
deprecated `InvokeService` RPC), and gRPC proxying (an `AppCallback.OnInvoke` call with
`dapr-app-id` metadata). Bodies: raw image bytes under any content type, JSON, protobuf
`ClassifyRequest`. Answers are checked against ../shared/expected.json.

Then every row of the README's error table: the HTTP status and body, and the gRPC status,
message and `google.rpc.ErrorInfo` detail, that a caller through daprd actually receives.

Two stacks: `main` (the birds model and MobileNet, CLASSIFIER_MAX_MESSAGE_MB=4, daprd
--max-body-size 12Mi) and `faulty` (its own Redis; the hostile test guest with a 1 s deadline,
APP_API_TOKEN on daprd and the app; a second app whose daprd has the wrong token).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from build import compile_guest
from conftest import IMAGES, MODELS, ROOT, SHARED
from dapr.clients import DaprClient
from dapr.proto import api_service_v1, api_v1
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from daprd import InvokeResult
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from real_dapr import APP_ID, LOOPBACK, App, Daprd, HttpAnswer, Stack, sidecar_env, stack

from service.edge.classifier_pb2 import ClassifyRequest, ClassifyResponse
from service.stores.dapr import DaprStore

pytestmark = pytest.mark.dapr

BIRD_PATH = IMAGES / "classify" / "bird.jpg"
BIRD = BIRD_PATH.read_bytes()
EXPECTED = json.loads((SHARED / "expected.json").read_text())["cases"]
MOBILENET = "mobilenet_v2_1.0_224_quant"
MODEL_DIRS = {"birds": "aiy_birds_v1", "mobilenet": MOBILENET}
APP_MESSAGE_MB = 4  # CLASSIFIER_MAX_MESSAGE_MB of the main app: the app's gRPC server takes 2x
DAPRD_BODY = "12Mi"  # --max-body-size of the main daprd
TOKEN = "s3cret-app-token"
TIMEOUT_S = 1  # CLASSIFIER_TIMEOUT_S of the hostile app
CALL_S = 60.0  # generous: the machine is shared


def top1(model: str, image: str = "images/classify/bird.jpg") -> tuple[int, str]:
    [case] = [c for c in EXPECTED if c["model"] == MODEL_DIRS[model] and c["image"] == image]
    return case["top1_index"], case["top1_label"]


# -- the processes ----------------------------------------------------------------------------


class CallerDaprd(Daprd):
    """The sidecar of a calling service that has no app port of its own."""

    def args(self) -> list[str]:
        args = super().args()
        for flag in ("--app-port", "--app-protocol", "--app-channel-address"):
            at = args.index(flag)
            del args[at : at + 2]
        return args


def start_pair(
    built: Stack,
    *,
    app_id: str = APP_ID,
    max_body_size: str = "16Mi",
    daprd_env: dict[str, str] | None = None,
    app_health_check: bool = True,
    **app_env: str,
) -> Daprd:
    """A (daprd, classifier serve) pair with options `Stack.add_replica` does not take; the
    stack stops it."""
    daprd = Daprd(
        built.workdir,
        built.resources,
        built.config,
        app_id=app_id,
        max_body_size=max_body_size,
        app_health_check=app_health_check,
        env_extra=daprd_env or {},
    )
    app = App(daprd, built.workdir, **app_env)
    built.replicas.append((daprd, app))
    daprd.start()
    app.wait_listening()
    return daprd


def upload(daprd: Daprd, cache: Path, name: str) -> None:
    model_dir = MODELS / MODEL_DIRS[name]
    labels = model_dir / "labels.txt"
    with sidecar_env(daprd), DaprClient() as client:
        DaprStore(client, cache).put(
            name, (model_dir / "model.tflite").read_bytes(), labels.read_text().splitlines()
        )


def wait_for(what: str, check: Callable[[], object], timeout: float = 90.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s (last: {last!r})")


def models_ready(daprd: Daprd, names: set[str]) -> bool:
    answer = daprd.invoke("models", timeout=10)
    if answer.status != 200:
        return False
    return names <= {m["name"] for m in answer.json()["models"] if m["ready"]}


@dataclass
class Main:
    stack: Stack
    daprd: Daprd  # the app's own sidecar
    caller: CallerDaprd  # another service's sidecar


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Main]:
    workdir = tmp_path_factory.mktemp("invoke-main")
    with stack(workdir, replicas=0) as built:
        daprd = start_pair(built, max_body_size=DAPRD_BODY, CLASSIFIER_MAX_MESSAGE_MB=str(APP_MESSAGE_MB))
        caller = CallerDaprd(workdir, built.resources, built.config, app_id="caller", app_health_check=False)
        try:
            caller.start()
            upload(daprd, workdir / "uploader", "birds")
            upload(daprd, workdir / "uploader", "mobilenet")
            wait_for("birds and mobilenet loaded", lambda: models_ready(daprd, {"birds", "mobilenet"}))
            yield Main(built, daprd, caller)
        finally:
            caller.stop()


@dataclass
class Faulty:
    stack: Stack
    daprd: Daprd  # hostile guest, 1 s deadline, the app token on daprd and the app
    wrong_token: Daprd  # app id classifier-badtoken: daprd's APP_API_TOKEN is not the app's
    # What callers got before any model was in the store (start-up not finished).
    loading: dict[str, Answer] = field(default_factory=dict)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    workdir = tmp_path_factory.mktemp("invoke-faulty")
    # Only the hostile guest (conftest's test_guests compiles all ten: minutes on a busy machine).
    hostile = compile_guest(ROOT / "wasm" / "testguests" / "hostile.c", workdir / "hostile.wasm")
    started = time.monotonic()
    with stack(workdir, replicas=0) as built:
        daprd = start_pair(
            built,
            app_health_check=False,  # so that calls reach the app while it is starting
            daprd_env={"APP_API_TOKEN": TOKEN},
            APP_API_TOKEN=TOKEN,
            CLASSIFIER_GUEST=str(hostile),
            CLASSIFIER_TIMEOUT_S=str(TIMEOUT_S),
            CLASSIFIER_DEFAULT_MODEL="birds",
        )
        wrong = start_pair(
            built,
            app_id="classifier-badtoken",
            daprd_env={"APP_API_TOKEN": "not-the-app-token"},
            APP_API_TOKEN=TOKEN,
        )
        result = Faulty(built, daprd, wrong)
        print(f"faulty: pairs up in {time.monotonic() - started:.1f} s")
        # No model in the store yet: the apps are up but not ready.
        result.loading["http"] = http_invoke(daprd, "classify", BIRD)
        result.loading["grpc"] = grpc_invoke(daprd, "classify", BIRD, "application/octet-stream")
        # With app health checks on, daprd holds calls back once its first probe failed (calls
        # made before that reach the app: here, and refused for the token).
        result.loading["unhealthy"] = wait_for(
            "daprd to hold calls back", lambda: unhealthy_answer(http_invoke(wrong, "classify", BIRD))
        )
        print(f"faulty: loading answers at {time.monotonic() - started:.1f} s")
        upload(daprd, workdir / "uploader", "birds")
        print(f"faulty: uploaded at {time.monotonic() - started:.1f} s")
        wait_for("the hostile app serving", lambda: serves(daprd))
        print(f"faulty: serving at {time.monotonic() - started:.1f} s")
        # Healthy once its model is loaded (HealthCheck carries no token): then the token decides.
        wait_for("the wrong-token app healthy", lambda: http_invoke(wrong, "classify", BIRD).http != 500)
        print(f"faulty: wrong-token app healthy at {time.monotonic() - started:.1f} s")
        yield result


def unhealthy_answer(answer: Answer) -> Answer | None:
    return answer if answer.http == 500 and "not in a healthy state" in answer.message else None


# -- calling -----------------------------------------------------------------------------------


@dataclass
class Answer:
    """What one caller got: gRPC callers fill `code`, HTTP callers `http` (and `code` from the
    body of an error)."""

    code: grpc.StatusCode
    message: str = ""
    error_info: dict | None = None  # the google.rpc.ErrorInfo detail, if any
    data: bytes = b""
    content_type: str = ""
    http: int | None = None
    body: dict | None = None  # the JSON body of an HTTP error
    type_url: str = ""

    def json(self) -> dict:
        return json.loads(self.data)


CODES = {c.value[0]: c for c in grpc.StatusCode}


def from_http(answer: HttpAnswer) -> Answer:
    content_type = answer.headers.get("Content-Type", "")
    if answer.status == 200:
        return Answer(grpc.StatusCode.OK, data=answer.body, content_type=content_type, http=200)
    body = json.loads(answer.body)  # every error daprd answers is JSON, whatever Content-Type says
    code = CODES.get(body.get("code"), grpc.StatusCode.UNKNOWN)
    infos = [d for d in body.get("details", []) if d.get("@type", "").endswith("google.rpc.ErrorInfo")]
    info = {k: v for k, v in infos[0].items() if k != "@type"} if infos else None
    message = body.get("message", "")
    return Answer(code, message, info, content_type=content_type, http=answer.status, body=body)


def from_rpc_error(error: grpc.RpcError) -> Answer:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    info = None
    for detail in status.details if status is not None else ():
        unpacked = error_details_pb2.ErrorInfo()
        if detail.Unpack(unpacked):
            info = json_format.MessageToDict(unpacked)
    return Answer(error.code(), error.details() or "", info)


def http_invoke(
    daprd: Daprd,
    method: str,
    body: bytes,
    query: str = "",
    content_type: str = "application/json",
    app_id: str | None = None,
) -> Answer:
    target = app_id or (APP_ID if isinstance(daprd, CallerDaprd) else daprd.app_id)
    answer = daprd.invoke(
        method, body, query, app_id=target, headers={"Content-Type": content_type}, timeout=CALL_S
    )
    return from_http(answer)


def grpc_invoke(
    daprd: Daprd,
    method: str,
    body: bytes,
    content_type: str,
    query: tuple[tuple[str, str], ...] = (),
    app_id: str | None = None,
    timeout: float = CALL_S,
) -> Answer:
    """Through DaprClient with DAPR_API_METHOD_INVOCATION_PROTOCOL=grpc: daprd's InvokeService."""
    with sidecar_env(daprd):
        os.environ["DAPR_API_METHOD_INVOCATION_PROTOCOL"] = "grpc"
        with DaprClient() as client, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # InvokeService is deprecated
            try:
                response = client.invoke_method(
                    app_id or (APP_ID if isinstance(daprd, CallerDaprd) else daprd.app_id),
                    method,
                    data=body,
                    content_type=content_type,
                    http_verb="POST",
                    http_querystring=query or None,
                    timeout=timeout,
                )
            except grpc.RpcError as error:
                return from_rpc_error(error)
    return Answer(grpc.StatusCode.OK, data=response.data, content_type=response.content_type)


def invoke_service_packed(daprd: Daprd, message: ClassifyRequest) -> Answer:
    """InvokeService with the request packed in the Any, as a gRPC caller of the SDK-less API."""
    packed = any_pb2.Any()
    packed.Pack(message)
    request = api_v1.InvokeServiceRequest(
        id=APP_ID, message=common_pb2.InvokeRequest(method="classify", data=packed)
    )
    with grpc.insecure_channel(f"{LOOPBACK}:{daprd.grpc_port}") as channel:
        try:
            response = api_service_v1.DaprStub(channel).InvokeService(request, timeout=CALL_S)
        except grpc.RpcError as error:
            return from_rpc_error(error)
    return Answer(
        grpc.StatusCode.OK,
        data=response.data.value,
        content_type=response.content_type,
        type_url=response.data.type_url,
    )


def proxy_invoke(
    daprd: Daprd,
    method: str,
    body: bytes,
    content_type: str = "application/octet-stream",
    query: str = "",
    app_id: str = APP_ID,
    packed: ClassifyRequest | None = None,
) -> Answer:
    """gRPC proxying: the app's own AppCallback.OnInvoke, called on daprd with `dapr-app-id`."""
    data = any_pb2.Any(value=body)
    if packed is not None:
        data.Pack(packed)
    request = common_pb2.InvokeRequest(
        method=method,
        data=data,
        content_type=content_type,
        http_extension=common_pb2.HTTPExtension(verb=common_pb2.HTTPExtension.POST, querystring=query),
    )
    with grpc.insecure_channel(
        f"{LOOPBACK}:{daprd.grpc_port}",
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    ) as channel:
        try:
            response = appcallback_pb2_grpc.AppCallbackStub(channel).OnInvoke(
                request, metadata=[("dapr-app-id", app_id)], timeout=CALL_S
            )
        except grpc.RpcError as error:
            return from_rpc_error(error)
    return Answer(
        grpc.StatusCode.OK,
        data=response.data.value,
        content_type=response.content_type,
        type_url=response.data.type_url,
    )


def serves(daprd: Daprd) -> bool:
    answer = http_invoke(daprd, "classify", BIRD, "model=birds")
    return answer.code == grpc.StatusCode.OK and answer.json()["predictions"][0]["index"] == top1("birds")[0]


# The ways a caller reaches `classify` with a raw image (body, content type, query string).
Path_ = Callable[[Main, str, bytes, str, str], Answer]
PATHS: dict[str, Path_] = {
    "http, the app's sidecar": lambda m, meth, b, ct, q: http_invoke(m.daprd, meth, b, q, ct),
    "http, a caller's sidecar": lambda m, meth, b, ct, q: http_invoke(m.caller, meth, b, q, ct),
    "grpc InvokeService (DaprClient)": lambda m, meth, b, ct, q: grpc_invoke(
        m.caller, meth, b, ct, tuple(tuple(p.split("=", 1)) for p in q.split("&") if p)
    ),
    "grpc proxy (dapr-app-id)": lambda m, meth, b, ct, q: proxy_invoke(m.caller, meth, b, ct, q),
}


def assert_error(answer: Answer, code: grpc.StatusCode, reason: str, fragment: str) -> None:
    """The status a caller gets for our errors: plain message, ErrorInfo{reason, domain,
    metadata: {trace_id}}; over HTTP the status as daprd's JSON, with daprd's HTTP code for it."""
    assert answer.code == code, answer
    assert fragment in answer.message and not answer.message.startswith("{"), answer
    info = dict(answer.error_info or {})
    trace_id = info.pop("metadata", {}).get("trace_id", "")
    assert info == {"reason": reason, "domain": "image-classifier"}, answer
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), answer
    if answer.http is not None:
        # daprd's rendering of the status, and the double's model of it (tests/daprd.py).
        detail = any_pb2.Any()
        metadata = {"trace_id": trace_id}
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="image-classifier", metadata=metadata))
        modelled = InvokeResult(code, b"", "", answer.message, status_details=(detail,))
        assert (answer.http, answer.body) == (modelled.http_status(), modelled.http_body()), answer
        assert answer.http == HTTP_OF[code], answer


HTTP_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


# -- classify: the body forms, every path ----------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/octet-stream", "image/jpeg", "text/plain"],
    ids=["as-dapr-invoke-sends-it", "octet-stream", "image-jpeg", "text-plain"],
)
def test_raw_image_under_any_content_type(main: Main, path: str, content_type: str) -> None:
    answer = PATHS[path](main, "classify", BIRD, content_type, "model=birds&top_k=3")
    assert answer.code == grpc.StatusCode.OK, answer
    response = answer.json()
    assert answer.content_type.startswith("application/json")
    assert (response["model"], response["version"], len(response["predictions"])) == ("birds", 1, 3)
    first = response["predictions"][0]
    assert (first["index"], first["label"]) == top1("birds")


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_query_string_picks_the_model(main: Main, path: str) -> None:
    answer = PATHS[path](main, "classify", BIRD, "application/octet-stream", "model=mobilenet&top_k=2")
    assert answer.code == grpc.StatusCode.OK, answer
    response = answer.json()
    assert response["model"] == "mobilenet" and len(response["predictions"]) == 2
    assert (response["predictions"][0]["index"], response["predictions"][0]["label"]) == top1("mobilenet")


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
@pytest.mark.parametrize("model", ["birds", "mobilenet"])
def test_json_body(main: Main, path: str, model: str) -> None:
    body = json.dumps({"image_base64": base64.b64encode(BIRD).decode(), "model": model, "top_k": 1}).encode()
    answer = PATHS[path](main, "classify", body, "application/json", "")
    assert answer.code == grpc.StatusCode.OK, answer
    response = answer.json()
    assert response["model"] == model and len(response["predictions"]) == 1
    assert (response["predictions"][0]["index"], response["predictions"][0]["label"]) == top1(model)


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_protobuf_body(main: Main, path: str) -> None:
    body = ClassifyRequest(image=BIRD, model="mobilenet", top_k=2).SerializeToString()
    answer = PATHS[path](main, "classify", body, "application/x-protobuf", "")
    assert answer.code == grpc.StatusCode.OK, answer
    assert answer.content_type == "application/x-protobuf"
    response = ClassifyResponse.FromString(answer.data)
    assert (response.model, len(response.predictions)) == ("mobilenet", 2)
    assert (response.predictions[0].index, response.predictions[0].label) == top1("mobilenet")


@pytest.mark.parametrize("via", ["InvokeService", "proxy"])
def test_protobuf_packed_in_any(main: Main, via: str) -> None:
    request = ClassifyRequest(image=BIRD, model="birds", top_k=2)
    if via == "InvokeService":
        answer = invoke_service_packed(main.caller, request)
    else:
        answer = proxy_invoke(main.caller, "classify", b"", packed=request)
    assert answer.code == grpc.StatusCode.OK, answer
    assert answer.type_url == "type.googleapis.com/classifier.v1.ClassifyResponse"
    response = ClassifyResponse.FromString(answer.data)
    assert (response.predictions[0].index, response.predictions[0].label) == top1("birds")
    assert len(response.predictions) == 2


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_models_method(main: Main, path: str) -> None:
    answer = PATHS[path](main, "models", b"", "application/json", "")
    assert answer.code == grpc.StatusCode.OK, answer
    listed = {m["name"]: m for m in answer.json()["models"]}
    assert set(listed) == {"birds", "mobilenet"} and all(m["ready"] for m in listed.values())
    assert answer.json()["default_model"] is None  # two models: requests must name one


def test_sdk_http_invoke_as_the_readme_shows(main: Main) -> None:
    """The README's Python example: DaprClient over daprd's HTTP API (the SDK's default)."""
    with sidecar_env(main.caller), DaprClient() as client:
        response = client.invoke_method(
            APP_ID,
            "classify",
            data=BIRD,
            content_type="application/octet-stream",
            http_verb="POST",
            http_querystring=(("model", "birds"), ("top_k", "3")),
        )
    prediction = json.loads(response.data)["predictions"][0]
    assert (prediction["index"], prediction["label"]) == top1("birds")


# -- errors: the README's table, as callers through daprd get them ---------------------------------

# name, body, content type, query, gRPC status, ErrorInfo reason, message fragment
ERRORS = [
    ("not an image", b"hello, not an image", "application/octet-stream", "model=birds",
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "could not be decoded"),
    ("malformed JSON", b'{"image_base64": ', "application/json", "",
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "JSON"),
    ("malformed protobuf", b"\xff\xff\xff", "application/x-protobuf", "",
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "protobuf"),
    ("bad top_k", BIRD, "application/octet-stream", "model=birds&top_k=x",
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "top_k"),
    ("no model named", BIRD, "application/octet-stream", "",
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "name a model"),
    ("unknown model", BIRD, "application/octet-stream", "model=nosuch",
     grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "model 'nosuch' not found"),
    ("over CLASSIFIER_MAX_MESSAGE_MB", b"\xff\xd8" + b"\x00" * (5 << 20), "application/octet-stream",
     "model=birds", grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED",
     f"over the limit of {APP_MESSAGE_MB << 20} (CLASSIFIER_MAX_MESSAGE_MB={APP_MESSAGE_MB})"),
]  # fmt: skip


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_error_reaches_the_caller(main: Main, path: str, case: tuple) -> None:
    _, body, content_type, query, code, reason, fragment = case
    answer = PATHS[path](main, "classify", body, content_type, query)
    assert_error(answer, code, reason, fragment)
    assert serves(main.daprd)


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_unknown_method(main: Main, path: str) -> None:
    answer = PATHS[path](main, "detect", BIRD, "application/octet-stream", "")
    assert_error(answer, grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED", "unknown method 'detect'")


def test_over_twice_the_app_limit_grpc_refuses_it(main: Main) -> None:
    """Between 2 x CLASSIFIER_MAX_MESSAGE_MB and daprd's --max-body-size, the app's gRPC server
    refuses the message before any handler: RESOURCE_EXHAUSTED without our ErrorInfo."""
    body = b"\x00" * ((2 * APP_MESSAGE_MB + 1) << 20)
    answers = {
        "http": http_invoke(main.daprd, "classify", body, "model=birds", "application/octet-stream"),
        "grpc": grpc_invoke(main.caller, "classify", body, "application/octet-stream"),
    }
    for answer in answers.values():
        assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED, answer
        assert "larger than max" in answer.message and answer.error_info is None, answer
    assert answers["http"].http == 429
    assert serves(main.daprd)


def test_over_daprds_max_body_size(main: Main) -> None:
    """Beyond daprd's --max-body-size daprd itself refuses the call, before the app."""
    body = b"\x00" * (13 << 20)  # DAPRD_BODY is 12Mi
    http = main.daprd.invoke(
        "classify", body, "model=birds", headers={"Content-Type": "application/octet-stream"}, timeout=CALL_S
    )
    grpc_answer = grpc_invoke(main.caller, "classify", body, "application/octet-stream")
    proxied = proxy_invoke(main.caller, "classify", body)
    assert http.status == 500, http  # daprd's own error, not the app's: not 413, not 429
    assert json.loads(http.body) == {
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": f"failed to invoke, id: {APP_ID}, err: stream too large",
    }
    for answer in (grpc_answer, proxied):
        assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED and answer.error_info is None, answer
        assert "larger than max" in answer.message, answer
    assert serves(main.daprd)


# -- errors that need the faulty stack ------------------------------------------------------------


def test_models_still_loading(faulty: Faulty) -> None:
    """Before any model is loaded: our UNAVAILABLE when calls reach the app; with app health
    checks on (as dapr.yaml runs it), daprd holds the call back with an error of its own."""
    for answer in (faulty.loading["http"], faulty.loading["grpc"]):
        assert_error(answer, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "no model in the store yet")
    unhealthy = faulty.loading["unhealthy"]
    assert unhealthy.http == 500 and unhealthy.error_info is None, unhealthy
    assert "app is not in a healthy state" in json.dumps(unhealthy.body), unhealthy


def test_app_token_on_both_is_sent_and_accepted(faulty: Faulty) -> None:
    assert serves(faulty.daprd)
    answer = grpc_invoke(faulty.daprd, "classify", BIRD, "application/octet-stream", (("model", "birds"),))
    assert answer.code == grpc.StatusCode.OK, answer


@pytest.mark.parametrize("via", ["http", "grpc", "proxy"])
def test_wrong_app_token_is_unauthenticated(faulty: Faulty, via: str) -> None:
    daprd = faulty.wrong_token
    if via == "http":
        answer = http_invoke(daprd, "classify", BIRD)
    elif via == "grpc":
        answer = grpc_invoke(daprd, "classify", BIRD, "application/octet-stream")
    else:
        answer = proxy_invoke(daprd, "classify", BIRD, app_id=daprd.app_id)
    assert_error(answer, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", "dapr-api-token")


HOSTILE = [
    ("loop", grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", f"deadline of {TIMEOUT_S} s"),
    ("sleep 3600", grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "deadline"),
    ("trap", grpc.StatusCode.INTERNAL, "GUEST_FAILED", "unreachable"),
    ("exit 3", grpc.StatusCode.INTERNAL, "GUEST_FAILED", "exited with code 3"),
]


@pytest.mark.parametrize("via", ["http", "grpc"])
@pytest.mark.parametrize(("mode", "code", "reason", "fragment"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_guest_failures_reach_the_caller(
    faulty: Faulty, via: str, mode: str, code: grpc.StatusCode, reason: str, fragment: str
) -> None:
    body = f"HOSTILE {mode}\n".encode()
    if via == "http":
        answer = http_invoke(faulty.daprd, "classify", body, content_type="application/octet-stream")
    else:
        answer = grpc_invoke(faulty.daprd, "classify", body, "application/octet-stream")
    assert_error(answer, code, reason, fragment)
    assert serves(faulty.daprd)


def test_caller_deadline(faulty: Faulty) -> None:
    """A gRPC caller's own deadline, shorter than the app's: the call ends without an answer of
    the app's (no details): DEADLINE_EXCEEDED from the caller's client, or CANCELLED when daprd's
    server, past the same deadline, resets the stream first. The app keeps serving."""
    answer = grpc_invoke(
        faulty.daprd, "classify", b"HOSTILE sleep 3600\n", "application/octet-stream", timeout=0.3
    )
    assert answer.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED), answer
    assert answer.error_info is None, answer
    assert serves(faulty.daprd)


def test_store_down(faulty: Faulty, tmp_path: Path) -> None:
    """Redis stopped: a model that must be fetched cannot be; afterwards everything serves again."""
    faulty.stack.redis.stop()
    try:
        http = http_invoke(faulty.daprd, "classify", BIRD, "model=other", "application/octet-stream")
        grpc_answer = grpc_invoke(
            faulty.daprd, "classify", BIRD, "application/octet-stream", (("model", "other"),)
        )
        loaded = http_invoke(faulty.daprd, "classify", BIRD, "model=birds", "application/octet-stream")
    finally:
        faulty.stack.redis.start()
    for answer in (http, grpc_answer):
        assert_error(answer, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", "state store")
    assert loaded.code == grpc.StatusCode.OK, loaded  # a loaded model does not need the store
    # The restarted Redis is empty (no persistence): upload again; the app serves on.
    upload(faulty.daprd, tmp_path, "birds")
    wait_for("serving after the store came back", lambda: serves(faulty.daprd))


# -- the command line ---------------------------------------------------------------------------


def classifier_invoke(daprd: Daprd, *args: str, protocol: str = "http") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))}
    env.update({k: v for k, v in daprd.env().items() if k.startswith("DAPR_")})
    env["DAPR_API_METHOD_INVOCATION_PROTOCOL"] = protocol
    return subprocess.run(
        [sys.executable, "-m", "service", "invoke", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cli_invoke_prints_one_line_per_error(main: Main, protocol: str) -> None:
    ok = classifier_invoke(main.caller, str(BIRD_PATH), "--model", "birds", "--top-k", "1", protocol=protocol)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["predictions"][0]["label"] == top1("birds")[1]

    failed = classifier_invoke(main.caller, str(BIRD_PATH), "--model", "nosuch", protocol=protocol)
    status = " (HTTP 404)" if protocol == "http" else ""
    expected = (
        f"classifier: {BIRD_PATH}: not_found{status}: model 'nosuch' not found in state store 'statestore'"
    )
    assert (failed.returncode, failed.stdout, failed.stderr.strip().splitlines()[-1:]) == (
        1,
        "",
        [expected],
    ), failed.stderr
    assert "Traceback" not in failed.stderr

    unknown_app = classifier_invoke(main.caller, str(BIRD_PATH), "--app-id", "nosuch-app", protocol=protocol)
    assert unknown_app.returncode == 1 and "Traceback" not in unknown_app.stderr, unknown_app.stderr
    assert "nosuch-app" in unknown_app.stderr.strip().splitlines()[-1], unknown_app.stderr
