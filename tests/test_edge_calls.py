"""The edge's interceptor in process, over a real gRPC socket: the app token, every error kind's status
and ErrorInfo, an unexpected exception as INTERNAL, and the call's own facts for the handler.

tests/test_dapr_app.py checks the same through `classifier serve` and the daprd double; these run in
the test process, so mutation testing (tools/mutation.py) sees what they cover.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.edge.calls import ERROR_DOMAIN, STATUS_OF, TOKEN_METHODS, EdgeInterceptor, current_call
from service.errors import ClassifierError, ErrorKind

SERVICE = "dapr.proto.runtime.v1.AppCallback"
TOKEN = "s3cret-token"


def behaviour(request: bytes, _context: grpc.ServicerContext) -> bytes:
    """The handler behind the interceptor: what the request names."""
    if request.startswith(b"raise:"):
        raise ClassifierError(ErrorKind(request[6:].decode()), f"it failed: {request[6:].decode()}")
    if request == b"bug":
        raise RuntimeError("a bug")
    if request == b"unknown":
        raise NotImplementedError
    call = current_call()
    return json.dumps({"method": call.method, "remaining": call.time_remaining()}).encode()


def methods() -> grpc.GenericRpcHandler:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(behaviour)
        for name in ("OnInvoke", "OnTopicEvent", "HealthCheck", "ListTopicSubscriptions")
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def serve(token: str | None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[EdgeInterceptor(token)])
    server.add_generic_rpc_handlers([methods()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module", params=[TOKEN, None], ids=["token", "no-token"])
def app(request: pytest.FixtureRequest) -> Iterator[tuple[grpc.Channel, str | None]]:
    server, port = serve(request.param)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, request.param
    channel.close()
    server.stop(None)


def call(channel: grpc.Channel, method: str, body: bytes, token: str | None = TOKEN, **kwargs: Any) -> bytes:
    metadata = [("dapr-api-token", token)] if token is not None else []
    stub = channel.unary_unary(f"/{SERVICE}/{method}")
    return stub(body, metadata=metadata, timeout=kwargs.get("timeout", 10))


def failure(channel: grpc.Channel, method: str, body: bytes, token: str | None = TOKEN) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(channel, method, body, token)
    return error.value


def test_token_methods_are_what_daprd_sends_the_token_on() -> None:
    assert "OnInvoke" in TOKEN_METHODS and "OnTopicEvent" in TOKEN_METHODS
    assert "HealthCheck" not in TOKEN_METHODS and "ListTopicSubscriptions" not in TOKEN_METHODS


@pytest.mark.parametrize("sent", [None, "", "s3cret-tokeN", "s3cret-token ", "s3cret"], ids=repr)
@pytest.mark.parametrize("method", ["OnInvoke", "OnTopicEvent"])
def test_a_missing_or_wrong_token_is_unauthenticated(
    app: tuple[grpc.Channel, str | None], method: str, sent: str | None
) -> None:
    channel, token = app
    if token is None:  # no APP_API_TOKEN: nothing is checked
        assert json.loads(call(channel, method, b"", sent))["method"] == method
        return
    error = failure(channel, method, b"", sent)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing or wrong dapr-api-token (APP_API_TOKEN of daprd and the app differ)"


@pytest.mark.parametrize("method", ["HealthCheck", "ListTopicSubscriptions"])
def test_calls_daprd_makes_without_a_token_need_none(
    app: tuple[grpc.Channel, str | None], method: str
) -> None:
    channel, _ = app
    assert json.loads(call(channel, method, b"", None))["method"] == method


def test_the_right_token_passes(app: tuple[grpc.Channel, str | None]) -> None:
    channel, _ = app
    assert json.loads(call(channel, "OnInvoke", b""))["method"] == "OnInvoke"


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.value)
def test_each_error_kind_is_its_status_with_error_info(
    app: tuple[grpc.Channel, str | None], kind: ErrorKind
) -> None:
    channel, _ = app
    error = failure(channel, "OnInvoke", f"raise:{kind.value}".encode())
    assert error.code() == STATUS_OF[kind] and error.details() == f"it failed: {kind.value}"
    status = rpc_status.from_call(error)
    assert status is not None and len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == (kind.value.upper(), ERROR_DOMAIN)


def test_the_status_codes_are_the_ones_daprd_maps_to_http() -> None:
    assert {kind: code.name for kind, code in STATUS_OF.items()} == {
        ErrorKind.INVALID_ARGUMENT: "INVALID_ARGUMENT",
        ErrorKind.NOT_FOUND: "NOT_FOUND",
        ErrorKind.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
        ErrorKind.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
        ErrorKind.UNAVAILABLE: "UNAVAILABLE",
        ErrorKind.GUEST_FAILED: "INTERNAL",
        ErrorKind.INTERNAL: "INTERNAL",
    }


def test_an_unexpected_exception_is_internal_with_its_message(app: tuple[grpc.Channel, str | None]) -> None:
    channel, _ = app
    error = failure(channel, "OnInvoke", b"bug")
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, "internal error: a bug")
    assert "a bug" in error.details()


def test_an_unknown_invoke_method_is_unimplemented_and_named(app: tuple[grpc.Channel, str | None]) -> None:
    channel, _ = app
    error = failure(channel, "OnInvoke", b"unknown")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == "unknown method '': the methods are classify and models"
    assert failure(channel, "OnTopicEvent", b"unknown").code() == grpc.StatusCode.UNKNOWN  # the SDK's own


def test_the_handler_sees_the_callers_deadline(app: tuple[grpc.Channel, str | None]) -> None:
    channel, _ = app
    remaining = json.loads(call(channel, "OnInvoke", b"", timeout=30))["remaining"]
    assert 25 < remaining < 31  # the deadline travels rounded up to grpc-timeout units
    # grpc-python reports "no deadline" as a huge remaining time: that is no deadline
    assert json.loads(call(channel, "OnInvoke", b"", timeout=None))["remaining"] is None


def test_outside_a_call_there_is_no_call() -> None:
    assert current_call().method == "" and current_call().time_remaining() is None
