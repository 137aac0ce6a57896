"""Around every AppCallback call: the app token, error statuses, and the call's own facts.

The SDK's handlers get no gRPC context, so they cannot choose a status (an exception
becomes UNKNOWN, a 500 for HTTP callers). This interceptor, given to the SDK's gRPC
server, turns a ClassifierError into the status daprd maps to the right HTTP code; it
rejects calls without the app token; and it makes the call's deadline and query string
visible to the handler, with its trace context (`traceparent` / `tracestate` metadata).

Every error status is built by `error_status`: the status message is the plain
human-readable message, and the machine-readable code travels as a `google.rpc.ErrorInfo`
in the status details (`grpc-status-details-bin`), with `reason` the upper-case error
code (`NOT_FOUND`, `GUEST_FAILED`, ...; AIP-193 style, as Dapr's own errors) and `domain`
`image-classifier`, and the call's trace id as `metadata["trace_id"]`. daprd passes the
details through: an HTTP caller gets `{"code": 5, "message": "...", "details": [{"@type":
".../google.rpc.ErrorInfo", "reason": "NOT_FOUND", "domain": "image-classifier", "metadata":
{"trace_id": "..."}}]}`, a gRPC caller the same status.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import ClassifierError, ErrorKind
from ..tracing import TraceContext, continue_trace

log = logging.getLogger(__name__)

STATUS_OF: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,  # HTTP 400
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,  # 404
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,  # 429
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,  # 504
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,  # 503
    ErrorKind.GUEST_FAILED: grpc.StatusCode.INTERNAL,  # 500: the business logic failed
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

# daprd's HTTPStatusFromCode (dapr's pkg/messaging/v1/util.go:312): what an HTTP caller of the
# invoke API gets for the app's gRPC status; anything else is 500.
HTTP_STATUS_OF: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}

# daprd sends the app token on these, and not on ListTopicSubscriptions, ListInputBindings
# or HealthCheck (which therefore must not require it).
TOKEN_METHODS = frozenset(
    {
        "OnInvoke",
        "OnTopicEvent",
        "OnBulkTopicEvent",
        "OnBulkTopicEventAlpha1",
        "OnBindingEvent",
        "OnJobEvent",
        "OnJobEventAlpha1",
    }
)


@dataclass(frozen=True)
class CallInfo:
    method: str
    querystring: str = ""
    deadline: float | None = None  # time.monotonic() by which the caller wants an answer
    trace: TraceContext = field(default_factory=continue_trace)  # from the call's metadata, or new

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("call_info", default=None)


def current_call() -> CallInfo:
    return _current.get() or CallInfo(method="")


ERROR_DOMAIN = "image-classifier"


def error_reason(kind: ErrorKind | str) -> str:
    """The ErrorInfo reason of an error code: `not_found` -> `NOT_FOUND`."""
    return (kind.value if isinstance(kind, ErrorKind) else kind).upper()


def error_status(code: grpc.StatusCode, reason: str, message: str, trace_id: str = "") -> grpc.Status:
    """The one place error statuses are built: `message` as the status message, and a
    google.rpc.ErrorInfo {reason, domain, metadata: {trace_id}} in the details."""
    detail = any_pb2.Any()
    metadata = {"trace_id": trace_id} if trace_id else {}
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


def status_of(error: ClassifierError, trace_id: str = "") -> grpc.Status:
    return error_status(STATUS_OF[error.kind], error_reason(error.kind), error.message, trace_id)


class EdgeInterceptor(grpc.ServerInterceptor):
    def __init__(self, app_api_token: str | None = None) -> None:
        self.app_api_token = app_api_token

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            return self._handle(method, inner, request, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _handle(
        self, method: str, inner: Callable[..., Any], request: Any, context: grpc.ServicerContext
    ) -> Any:
        """One call: the token, the call's facts for the handler, and every error as a status."""
        metadata = dict(context.invocation_metadata())
        trace = continue_trace(metadata)
        if self.app_api_token is not None and method in TOKEN_METHODS and not self._token_ok(metadata):
            context.abort_with_status(
                error_status(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "UNAUTHENTICATED",
                    "missing or wrong dapr-api-token (APP_API_TOKEN of daprd and the app differ)",
                    trace.trace_id,
                )
            )
        remaining = context.time_remaining()
        info = CallInfo(
            method=method,
            querystring=_querystring(request),
            deadline=time.monotonic() + remaining if remaining is not None and remaining < 1e9 else None,
            trace=trace,
        )
        token = _current.set(info)
        try:
            return inner(request, context)
        except ClassifierError as exc:
            context.abort_with_status(status_of(exc, trace.trace_id))
        except NotImplementedError:
            if method == "OnInvoke":  # the SDK's "unknown method"
                unknown = getattr(request, "method", "")
                context.abort_with_status(
                    error_status(
                        grpc.StatusCode.UNIMPLEMENTED,
                        "UNIMPLEMENTED",
                        f"unknown method {unknown!r}: the methods are classify and models",
                        trace.trace_id,
                    )
                )
            raise  # an unknown topic: UNIMPLEMENTED (the SDK set it), which daprd drops
        except Exception as exc:
            log.exception("%s failed", method)
            context.abort_with_status(
                error_status(
                    grpc.StatusCode.INTERNAL,
                    error_reason(ErrorKind.INTERNAL),
                    f"internal error: {exc}",
                    trace.trace_id,
                )
            )
        finally:
            _current.reset(token)

    def _token_ok(self, metadata: dict[str, Any]) -> bool:
        sent = metadata.get("dapr-api-token")  # None: no token, which matches no app token
        assert self.app_api_token is not None
        return isinstance(sent, str) and hmac.compare_digest(sent.encode(), self.app_api_token.encode())


def _querystring(request: Any) -> str:
    extension = getattr(request, "http_extension", None)
    return str(extension.querystring) if extension is not None else ""
