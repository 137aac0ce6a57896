"""The edge's interceptor in process, over a real gRPC socket: the app token, every error kind's status
and ErrorInfo, an unexpected exception as INTERNAL, and the call's own facts for the handler.

tests/test_dapr_app.py checks the same through `classifier serve` and the daprd double; these run in
the test process, so mutation testing (tools/mutation.py) sees what they cover.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.edge.calls import (
    ERROR_DOMAIN,
    STATUS_OF,
    TOKEN_METHODS,
    EdgeInterceptor,
    current_call,
    error_reason,
    error_status,
    status_of,
)
from service.errors import ClassifierError, ErrorKind

SERVICE = "dapr.proto.runtime.v1.AppCallback"
TOKEN = "s3cret-token"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def answer(method: str, context: grpc.ServicerContext) -> StringValue:
    """What the handler saw: the call's facts (from the interceptor) and its context (passed through)."""
    call = current_call()
    facts = {
        "method": call.method,
        "querystring": call.querystring,
        "remaining": call.time_remaining(),
        "trace_id": call.trace.trace_id,
    }
    return StringValue(value=json.dumps({**facts, "peer": context.peer().split(":")[0], "named": method}))


def on_invoke(request: common_pb2.InvokeRequest, context: grpc.ServicerContext) -> StringValue:
    """OnInvoke behind the interceptor: the request's method names what to do."""
    if request.method.startswith("raise:"):
        kind = request.method[6:]
        raise ClassifierError(ErrorKind(kind), f"it failed: {kind}")
    if request.method == "bug":
        raise RuntimeError("a bug")
    if request.method == "unknown":
        raise NotImplementedError  # what the SDK raises for a method no handler has
    return answer(request.method, context)


def on_topic_event(request: appcallback_pb2.TopicEventRequest, context: grpc.ServicerContext) -> StringValue:
    if request.topic == "unknown":
        raise NotImplementedError
    return answer(request.topic, context)


def subscriptions(_request: Empty, context: grpc.ServicerContext) -> Iterator[StringValue]:
    """A streaming method: the interceptor passes it through untouched."""
    yield answer("first", context)
    yield StringValue(value="second")


def methods() -> grpc.GenericRpcHandler:
    def unary(function: Any, request_type: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            function,
            request_deserializer=request_type.FromString,
            response_serializer=StringValue.SerializeToString,
        )

    handlers = {
        "OnInvoke": unary(on_invoke, common_pb2.InvokeRequest),
        "OnTopicEvent": unary(on_topic_event, appcallback_pb2.TopicEventRequest),
        "HealthCheck": unary(lambda _r, c: answer("health", c), Empty),
        "ListTopicSubscriptions": unary(lambda _r, c: answer("subscriptions", c), Empty),
        "Stream": grpc.unary_stream_rpc_method_handler(
            subscriptions,
            request_deserializer=Empty.FromString,
            response_serializer=StringValue.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def serve(token: str | None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[EdgeInterceptor(token)])
    server.add_generic_rpc_handlers([methods()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@contextmanager
def served(token: str | None) -> Iterator[grpc.Channel]:
    server, port = serve(token)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(None)


@pytest.fixture(scope="module", params=[TOKEN, None], ids=["token", "no-token"])
def app(request: pytest.FixtureRequest) -> Iterator[tuple[grpc.Channel, str | None]]:
    server, port = serve(request.param)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, request.param
    channel.close()
    server.stop(None)


REQUESTS: dict[str, Any] = {
    "OnInvoke": common_pb2.InvokeRequest,
    "OnTopicEvent": appcallback_pb2.TopicEventRequest,
    "HealthCheck": Empty,
    "ListTopicSubscriptions": Empty,
}


def call(
    channel: grpc.Channel, method: str, name: str = "", token: str | None = TOKEN, **kwargs: Any
) -> dict[str, Any]:
    """Call `method` with a request naming `name` (OnInvoke's method, OnTopicEvent's topic); what the
    handler saw."""
    metadata = [("dapr-api-token", token)] if token is not None else []
    if "traceparent" in kwargs:
        metadata.append(("traceparent", kwargs["traceparent"]))
    request_type = REQUESTS[method]
    if method == "OnInvoke":
        request = request_type(
            method=name, http_extension=common_pb2.HTTPExtension(querystring=kwargs.get("query", ""))
        )
    elif method == "OnTopicEvent":
        request = request_type(topic=name)
    else:
        request = request_type()
    stub = channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=StringValue.FromString,
    )
    return json.loads(stub(request, metadata=metadata, timeout=kwargs.get("timeout", 10)).value)


def failure(
    channel: grpc.Channel, method: str, name: str = "", token: str | None = TOKEN, **kwargs: Any
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(channel, method, name, token, **kwargs)
    return error.value


def reason_of(error: grpc.RpcError) -> tuple[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None and len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason, info.domain


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
        assert call(channel, method, "ok", sent)["method"] == method
        return
    error = failure(channel, method, "ok", sent)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing or wrong dapr-api-token (APP_API_TOKEN of daprd and the app differ)"
    assert reason_of(error) == ("UNAUTHENTICATED", ERROR_DOMAIN)


@pytest.mark.parametrize("method", ["HealthCheck", "ListTopicSubscriptions"])
def test_calls_daprd_makes_without_a_token_need_none(
    app: tuple[grpc.Channel, str | None], method: str
) -> None:
    channel, _ = app
    assert call(channel, method, token=None)["method"] == method


def test_the_right_token_passes_and_the_handler_gets_the_request_and_its_context(
    app: tuple[grpc.Channel, str | None],
) -> None:
    channel, _ = app
    seen = call(channel, "OnInvoke", "classify", query="model=birds&top_k=3", traceparent=TRACEPARENT)
    assert seen == {
        "method": "OnInvoke",
        "querystring": "model=birds&top_k=3",  # the HTTP caller's query string, from http_extension
        "remaining": pytest.approx(10, abs=1.5),
        "trace_id": TRACE_ID,  # the caller's trace, from the call's metadata
        "peer": "ipv4",  # the call's own context reached the handler
        "named": "classify",  # the request, deserialized
    }
    assert call(channel, "OnTopicEvent", "images")["querystring"] == ""  # an event has none


def test_streaming_methods_pass_through(app: tuple[grpc.Channel, str | None]) -> None:
    channel, _ = app
    stub = channel.unary_stream(
        f"/{SERVICE}/Stream",
        request_serializer=Empty.SerializeToString,
        response_deserializer=StringValue.FromString,
    )
    first, second = list(stub(Empty(), timeout=10))
    assert json.loads(first.value)["named"] == "first" and second.value == "second"


def test_an_unknown_rpc_is_unimplemented(app: tuple[grpc.Channel, str | None]) -> None:
    channel, _ = app
    with pytest.raises(grpc.RpcError) as error:
        channel.unary_unary(f"/{SERVICE}/OnNothing")(b"", timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.value)
def test_each_error_kind_is_its_status_with_error_info(
    app: tuple[grpc.Channel, str | None], kind: ErrorKind
) -> None:
    channel, _ = app
    error = failure(channel, "OnInvoke", f"raise:{kind.value}")
    assert error.code() == STATUS_OF[kind] and error.details() == f"it failed: {kind.value}"
    assert reason_of(error) == (kind.value.upper(), ERROR_DOMAIN)


def test_error_reasons_of_kinds_and_of_plain_codes() -> None:
    assert error_reason(ErrorKind.NOT_FOUND) == "NOT_FOUND" and error_reason("guest_failed") == "GUEST_FAILED"


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


def test_an_unexpected_exception_is_internal_and_logged_with_its_traceback(
    app: tuple[grpc.Channel, str | None], caplog: pytest.LogCaptureFixture
) -> None:
    channel, _ = app
    with caplog.at_level(logging.ERROR, logger="service.edge.calls"):
        error = failure(channel, "OnInvoke", "bug")
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, "internal error: a bug")
    assert reason_of(error) == ("INTERNAL", ERROR_DOMAIN)
    [record] = [r for r in caplog.records if r.name == "service.edge.calls"]
    assert record.getMessage() == "OnInvoke failed" and record.exc_info is not None  # a bug: its traceback


def test_an_unknown_invoke_method_is_unimplemented_and_named(app: tuple[grpc.Channel, str | None]) -> None:
    channel, _ = app
    error = failure(channel, "OnInvoke", "unknown")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == "unknown method 'unknown': the methods are classify and models"
    assert reason_of(error) == ("UNIMPLEMENTED", ERROR_DOMAIN)
    # an unknown topic keeps the SDK's own status, which daprd drops the event on
    assert failure(channel, "OnTopicEvent", "unknown").code() == grpc.StatusCode.UNKNOWN


def test_the_handler_sees_the_callers_deadline_or_none(app: tuple[grpc.Channel, str | None]) -> None:
    channel, _ = app
    remaining = call(channel, "OnInvoke", "ok", timeout=30)["remaining"]
    assert 25 < remaining < 31  # the deadline travels rounded up to grpc-timeout units
    # grpc-python reports "no deadline" as a huge remaining time: that is no deadline
    assert call(channel, "OnInvoke", "ok", timeout=None)["remaining"] is None


def test_outside_a_call_there_is_no_call() -> None:
    assert current_call().method == "" and current_call().time_remaining() is None


# -- the call's trace id in every error's ErrorInfo (what a caller quotes to find the request's logs) --


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    [detail] = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    return info


def trace_of(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    return dict(error_info(status).metadata)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("raise:not_found", grpc.StatusCode.NOT_FOUND),
        ("raise:guest_failed", grpc.StatusCode.INTERNAL),
        ("bug", grpc.StatusCode.INTERNAL),
        ("unknown", grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_an_error_carries_the_callers_trace_id(
    app: tuple[grpc.Channel, str | None], name: str, code: grpc.StatusCode
) -> None:
    channel, _ = app
    error = failure(channel, "OnInvoke", name, traceparent=TRACEPARENT)
    assert error.code() == code and trace_of(error) == {"trace_id": TRACE_ID}


def test_a_refused_token_carries_the_callers_trace_id() -> None:
    with served(TOKEN) as channel:
        error = failure(channel, "OnInvoke", "ok", "wrong", traceparent=TRACEPARENT)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and trace_of(error) == {"trace_id": TRACE_ID}


def test_without_a_traceparent_an_error_carries_the_new_trace_of_the_call(
    app: tuple[grpc.Channel, str | None],
) -> None:
    channel, _ = app
    first = trace_of(failure(channel, "OnInvoke", "raise:not_found"))["trace_id"]
    second = trace_of(failure(channel, "OnInvoke", "raise:not_found"))["trace_id"]
    assert len(first) == 32 and int(first, 16) != 0 and first != second  # a new trace per call


def test_an_error_status_made_outside_a_call_has_no_trace_id() -> None:
    """The UI's own errors (service/ui/server.py) have no call trace: their ErrorInfo has no metadata."""

    def details(status: grpc.Status) -> status_pb2.Status:
        return status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])

    plain = details(error_status(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "no such page: /x"))
    assert (plain.code, plain.message) == (grpc.StatusCode.NOT_FOUND.value[0], "no such page: /x")
    info = error_info(plain)
    assert (info.reason, info.domain, dict(info.metadata)) == ("NOT_FOUND", ERROR_DOMAIN, {})
    traced = details(error_status(grpc.StatusCode.INTERNAL, "INTERNAL", "x", trace_id=TRACE_ID))
    assert dict(error_info(traced).metadata) == {"trace_id": TRACE_ID}
    of_error = details(status_of(ClassifierError(ErrorKind.INVALID_ARGUMENT, "bad image")))
    assert (of_error.code, of_error.message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "bad image")
    assert (error_info(of_error).reason, dict(error_info(of_error).metadata)) == ("INVALID_ARGUMENT", {})


def test_a_missing_token_matches_no_app_token() -> None:
    """A call without dapr-api-token is refused whatever the app token is, even one that reads
    like "no value"."""
    with served("None") as channel:
        assert failure(channel, "OnInvoke", "ok", token=None).code() == grpc.StatusCode.UNAUTHENTICATED
        assert call(channel, "OnInvoke", "ok", token="None")["method"] == "OnInvoke"
