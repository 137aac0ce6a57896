"""A daprd test double: the Dapr API an app calls, and the AppCallback calls daprd makes on the app.

No daprd can run here, so tests drive the app through this double over real loopback gRPC sockets,
using the protos shipped in the dapr wheel. It mirrors daprd where the app can observe it (see
/work/shared/docs/dapr-facts.md):

* Dapr API (gRPC): in-memory state stores with daprd/Redis etag rules and key prefixing, PublishEvent
  with an in-process broker that delivers to the app's subscriptions (CloudEvent envelope rules of
  daprd: JSON is re-encoded, ``application/octet-stream`` passes bytes, other non-text types arrive
  empty), fault injection. Every other RPC answers UNIMPLEMENTED.
* HTTP: ``/v1.0/healthz`` and ``/v1.0/healthz/outbound``, which ``DaprClient()`` polls at construction.
* App channel: ListTopicSubscriptions / HealthCheck without token, OnInvoke and OnTopicEvent with
  ``dapr-api-token``; topic results interpreted like daprd's gRPC postman (retry per resiliency
  policy, DROP and UNIMPLEMENTED drop, dead-letter topics).
* Bulk subscribe (a subscription whose ``bulk_subscribe.enabled``): daprd's default bulk subscriber
  over the broker's workers (``Redis concurrency``: 4 here), OnBulkTopicEvent falling back to
  OnBulkTopicEventAlpha1, per-entry statuses, retries of the failed entries only, dead letters
  (see ``_deliver_batch``).

Not modelled: app-health gating of invocations/subscriptions, bindings, jobs,
actors, TTLs, CEL beyond ``event.<attr> ==/!= "literal"`` joined by ``&&``/``||``.
"""

from __future__ import annotations

import base64
import binascii
import json
import queue
import re
import secrets
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import grpc
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import (
    appcallback_pb2,
    appcallback_pb2_grpc,
    dapr_pb2,
    dapr_pb2_grpc,
    pubsub_pb2,
    state_pb2,
)
from google.protobuf import any_pb2, empty_pb2, json_format, struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.edge.calls import HTTP_STATUS_OF  # daprd's own mapping, which the double applies too

LOOPBACK = "127.0.0.1"
DAPR_SERVICE = dapr_pb2.DESCRIPTOR.services_by_name["Dapr"]
FAKE_PUBLISHER_APP_ID = "fake-publisher"
FAKE_CALLER_APP_ID = "fake-caller"
CLOUDEVENT_TYPE = "com.dapr.event.sent"
KEY_SEPARATOR = "||"

DeliveryStatus = Literal["SUCCESS", "RETRY", "DROP"]


class _UseConfiguredToken:
    """Sentinel type: "send the app token this double was configured with"."""


CONFIGURED_TOKEN = _UseConfiguredToken()


@dataclass(frozen=True)
class RetryPolicy:
    """A constant-interval resiliency retry policy for inbound pub/sub (component inbound in daprd)."""

    max_retries: int = 3
    interval_s: float = 0.05


@dataclass(frozen=True)
class Published:
    pubsub: str
    topic: str
    data: bytes
    content_type: str
    metadata: dict[str, str]
    event_id: str


@dataclass(frozen=True)
class InvokeResult:
    code: grpc.StatusCode
    data: bytes
    content_type: str
    details: str  # the status message
    # Set when the app answered with a packed protobuf message (data is then Any.value).
    type_url: str = ""
    # The status details (grpc-status-details-bin) of an error, as daprd passes them on.
    status_details: tuple[any_pb2.Any, ...] = ()

    def error_info(self) -> dict[str, Any] | None:
        """The google.rpc.ErrorInfo in the status details, as a dict (reason, domain, metadata)."""
        for detail in self.status_details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return {"reason": info.reason, "domain": info.domain, "metadata": dict(info.metadata)}
        return None

    def http_status(self) -> int:
        """What daprd's HTTP API answers an invoke caller with for this status."""
        return HTTP_STATUS_OF.get(self.code, 500)

    def http_body(self) -> dict[str, Any]:
        """daprd's HTTP error body for a failed call: the status as protojson
        (pkg/api/http/directmessaging.go:196-212), details with their `@type`."""
        body: dict[str, Any] = {"code": self.code.value[0], "message": self.details}
        if self.status_details:
            body["details"] = [json_format.MessageToDict(d) for d in self.status_details]
        return body


@dataclass(frozen=True)
class Delivery:
    status: DeliveryStatus
    attempts: int
    dead_lettered: bool
    # The gRPC error of the last attempt, if any: makes failing tests readable.
    last_error: str = ""


@dataclass(frozen=True)
class Route:
    match: str
    path: str


@dataclass(frozen=True)
class Subscription:
    pubsub: str
    topic: str
    routes: tuple[Route, ...]
    dead_letter_topic: str
    metadata: dict[str, str]
    # The default route; daprd uses "" when the app returned neither rules nor default.
    default_path: str | None = ""
    # Bulk subscribe: the most entries per batch and the wait to fill one; 0 messages: off.
    bulk_max_messages: int = 0
    bulk_max_await_ms: int = 0

    def path_for(self, attributes: dict[str, str]) -> str | None:
        """The route daprd would deliver to, or None when no rule matches (the event is dropped)."""
        for route in self.routes:
            if _compile_cel(route.match)(attributes):
                return route.path
        return self.default_path


@dataclass
class _Event:
    """A CloudEvent as daprd hands it to the app, plus what was published (kept for dead letters)."""

    id: str
    source: str
    type: str
    spec_version: str
    data_content_type: str
    data: bytes
    extensions: dict[str, Any]
    published_data: bytes
    published_content_type: str

    def attributes(self) -> dict[str, str]:
        """The string attributes CEL routing rules can test (``event.<name>``)."""
        attributes = {key: value for key, value in self.extensions.items() if isinstance(value, str)}
        attributes.update(
            id=self.id,
            source=self.source,
            type=self.type,
            specversion=self.spec_version,
            datacontenttype=self.data_content_type,
        )
        return attributes


@dataclass
class _StoredItem:
    value: bytes
    # Per-key version like the Redis state store: 1 on insert, +1 on every write.
    version: int
    # Redis's `first-write` hash field: set by a first-write save, kept by later writes.
    first_write: bool = False


class _ApiError(Exception):
    """An error of daprd's API; `reason`: the google.rpc.ErrorInfo daprd's own errors carry in
    their status details (domain dapr.io), where the real one does (dapr/kit's ErrorBuilder)."""

    def __init__(self, code: grpc.StatusCode, details: str, reason: str | None = None) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason


# --- CEL routing rules --------------------------------------------------------------------------------

_CEL_TERM = re.compile(r"""^\s*event\.(\w+)\s*(==|!=)\s*(["'])(.*?)\3\s*$""")


def _compile_cel(expression: str) -> Callable[[dict[str, str]], bool]:
    """The small CEL subset the double understands; anything else fails loudly rather than misroute."""
    alternatives: list[list[tuple[str, str, str]]] = []
    for alternative in expression.split("||"):
        terms = []
        for term in alternative.split("&&"):
            parsed = _CEL_TERM.match(term)
            if parsed is None:
                raise ValueError(f"the daprd double cannot evaluate the CEL rule {expression!r}")
            terms.append((parsed.group(1), parsed.group(2), parsed.group(4)))
        alternatives.append(terms)

    def matches(attributes: dict[str, str]) -> bool:
        return any(
            all((attributes.get(name) == literal) == (operator == "==") for name, operator, literal in terms)
            for terms in alternatives
        )

    return matches


# --- CloudEvent envelope (components-contrib pubsub/envelope.go, daprd subscriptions.go) ----------------


def _media_type(content_type: str) -> str:
    return content_type.lower().split(";", 1)[0].strip()


def _is_json(content_type: str) -> bool:
    return _media_type(content_type) == "application/json"


def _is_cloudevent(content_type: str) -> bool:
    return _media_type(content_type) == "application/cloudevents+json"


def _is_string(content_type: str) -> bool:
    return content_type.lower().startswith("text/") or _media_type(content_type) == "application/xml"


def _go_json(value: Any) -> bytes:
    """Go's json.Marshal: compact, map keys sorted, <>& escaped, non-ASCII kept as UTF-8."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _go_string(data: bytes) -> str:
    # Go's JSON encoder replaces invalid UTF-8 with U+FFFD: binary data in a string field is corrupted.
    return data.decode("utf-8", errors="replace")


def _cloudevent_from_publish(
    request: pubsub_pb2.PublishEventRequest, source: str
) -> tuple[dict[str, Any], str | None]:
    """The CloudEvent daprd puts on the broker for a PublishEvent; second item: why it is undeliverable."""
    metadata = dict(request.metadata)
    content_type = request.data_content_type
    if metadata.get("rawPayload", "").lower() == "true":
        # No envelope: a subscriber without rawPayload cannot parse it as a CloudEvent.
        event = {"data_base64": base64.b64encode(request.data).decode(), "raw": True}
        return event, None
    if _is_cloudevent(content_type):
        try:
            event = json.loads(request.data)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            return {}, "the published application/cloudevents+json payload is not a JSON object"
        event.setdefault("source", "Dapr")
        event.setdefault("type", CLOUDEVENT_TYPE)
        event.setdefault("specversion", "1.0")
        return event, None

    content_type = content_type or "text/plain"
    event: dict[str, Any] = {
        "id": metadata.get("cloudevent.id") or str(uuid.uuid4()),
        "source": metadata.get("cloudevent.source") or source,
        "type": metadata.get("cloudevent.type") or CLOUDEVENT_TYPE,
        "specversion": "1.0",
        "datacontenttype": content_type,
    }
    if _is_json(content_type):
        try:
            event["data"] = json.loads(request.data)
        except ValueError:
            event["data"] = _go_string(request.data)
    elif _media_type(content_type) == "application/octet-stream":
        event["data_base64"] = base64.b64encode(request.data).decode()
    else:
        event["data"] = _go_string(request.data)
    # The publisher's trace overrides, as daprd takes them (pkg/runtime/pubsub/cloudevents.go).
    if metadata.get("cloudevent.traceparent"):
        event["traceid"] = event["traceparent"] = metadata["cloudevent.traceparent"]
    if metadata.get("cloudevent.tracestate"):
        event["tracestate"] = metadata["cloudevent.tracestate"]
    return event, None


def _event_for_app(
    cloudevent: dict[str, Any],
    pubsub: str,
    topic: str,
    traceparent: str,
    published: Published,
    in_batch: bool = False,
) -> _Event:
    """What daprd's GRPCEnvelopeFromSubscriptionMessage makes of a broker CloudEvent; in a batch,
    what extractCloudEvent makes of it, which never reads data_base64: binary events arrive
    empty (dapr pkg/runtime/pubsub/subscriptions.go:485-503)."""
    content_type = str(cloudevent.get("datacontenttype", ""))
    data = b""
    if in_batch:
        pass  # data_base64 is left out (and so never fails to decode)
    elif cloudevent.get("data_base64") is not None:
        # Go's base64.StdEncoding: strict (Python's default silently skips bad characters).
        data = base64.b64decode(cloudevent["data_base64"], validate=True)
    if cloudevent.get("data") is not None and cloudevent.get("data_base64") is None:
        value = cloudevent["data"]
        if _is_string(content_type) and isinstance(value, str):
            data = value.encode()
        elif _is_json(content_type) or _is_cloudevent(content_type):
            data = _go_json(value)
        # Any other content type (image/png, ...): daprd leaves the data empty.
    reserved = {"id", "source", "datacontenttype", "type", "specversion", "data", "data_base64"}
    extensions = {key: value for key, value in cloudevent.items() if key not in reserved}
    extensions.update(traceid=traceparent, traceparent=traceparent, topic=topic, pubsubname=pubsub)
    return _Event(
        id=str(cloudevent.get("id", "")),
        source=str(cloudevent.get("source", "")),
        type=str(cloudevent.get("type", "")),
        spec_version=str(cloudevent.get("specversion", "")),
        data_content_type=content_type,
        data=data,
        extensions=extensions,
        published_data=published.data,
        published_content_type=published.content_type,
    )


def _traceparent(parent: str = "") -> str:
    """daprd's span for a call to the app (tracing on): a child of the caller's, or a new trace."""
    parts = parent.split("-")
    trace_id = parts[1] if len(parts) == 4 and len(parts[1]) == 32 else secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


def _given_event(
    pubsub: str,
    topic: str,
    data: bytes,
    content_type: str,
    event_id: str,
    extensions: dict[str, Any] | None = None,
) -> _Event:
    """An event delivered exactly as given (deliver, deliver_batch): no envelope conversion."""
    traceparent = _traceparent()
    return _Event(
        id=event_id,
        source=FAKE_PUBLISHER_APP_ID,
        type=CLOUDEVENT_TYPE,
        spec_version="1.0",
        data_content_type=content_type,
        data=data,
        extensions={
            **(extensions or {}),
            "traceid": traceparent,
            "traceparent": traceparent,
            "pubsubname": pubsub,
            "topic": topic,
        },
        published_data=data,
        published_content_type=content_type,
    )


# --- Dapr API server ---------------------------------------------------------------------------------


class _DaprApi(dapr_pb2_grpc.DaprServicer):
    """The Dapr API RPCs the app uses; the rest keep the generated UNIMPLEMENTED answers."""

    def __init__(self, daprd: FakeDaprd) -> None:
        self._daprd = daprd

    def SaveState(self, request: state_pb2.SaveStateRequest, context: grpc.ServicerContext) -> Message:
        self._run(context, lambda: self._daprd._save_state(request.store_name, list(request.states)))
        return empty_pb2.Empty()

    def GetState(self, request: state_pb2.GetStateRequest, context: grpc.ServicerContext) -> Message:
        item = self._run(context, lambda: self._daprd._get_state(request.store_name, request.key))
        if item is None:
            return state_pb2.GetStateResponse()
        return state_pb2.GetStateResponse(data=item.value, etag=str(item.version))

    def GetBulkState(self, request: state_pb2.GetBulkStateRequest, context: grpc.ServicerContext) -> Message:
        items = self._run(
            context, lambda: self._daprd._get_bulk_state(request.store_name, list(request.keys))
        )
        return state_pb2.GetBulkStateResponse(items=items)

    def DeleteState(self, request: state_pb2.DeleteStateRequest, context: grpc.ServicerContext) -> Message:
        etag = request.etag.value if request.HasField("etag") else None
        first_write = request.options.concurrency == common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE
        self._run(
            context, lambda: self._daprd._delete_state(request.store_name, request.key, etag, first_write)
        )
        return empty_pb2.Empty()

    def ExecuteStateTransaction(
        self, request: state_pb2.ExecuteStateTransactionRequest, context: grpc.ServicerContext
    ) -> Message:
        self._run(context, lambda: self._daprd._transact(request.storeName, list(request.operations)))
        return empty_pb2.Empty()

    def PublishEvent(self, request: pubsub_pb2.PublishEventRequest, context: grpc.ServicerContext) -> Message:
        self._run(context, lambda: self._daprd._publish_from_app(request))
        return empty_pb2.Empty()

    @staticmethod
    def _run(context: grpc.ServicerContext, operation: Callable[[], Any]) -> Any:
        try:
            return operation()
        except _ApiError as error:
            if error.reason is None:
                context.abort(error.code, error.details)
            info = any_pb2.Any()
            info.Pack(error_details_pb2.ErrorInfo(domain="dapr.io", reason=error.reason))
            status = status_pb2.Status(code=error.code.value[0], message=error.details, details=[info])
            context.abort_with_status(rpc_status.to_status(status))


def _aborting_handler(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that fails every call with ``code``."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    def abort_streaming(_request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(code, details)
        yield  # pragma: no cover - makes this a generator, as response-streaming handlers must be

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(abort)
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_streaming, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_streaming, **codecs)
    return grpc.unary_unary_rpc_method_handler(abort, **codecs)


class _ApiInterceptor(grpc.ServerInterceptor):
    """Counts calls and applies the API token check, the unavailable flag and injected faults."""

    def __init__(self, daprd: FakeDaprd) -> None:
        self._daprd = daprd

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        rpc_name = handler_call_details.method.rsplit("/", 1)[-1]
        handler = continuation(handler_call_details)
        failure = self._daprd._admit(rpc_name, dict(handler_call_details.invocation_metadata))
        if failure is None:
            return handler
        return _aborting_handler(handler, *failure)


class _HealthzServer(ThreadingHTTPServer):
    daemon_threads = True
    daprd: FakeDaprd


class _HealthzHandler(BaseHTTPRequestHandler):
    server: _HealthzServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/") not in ("/v1.0/healthz", "/v1.0/healthz/outbound"):
            self.send_error(404)
        elif self.server.daprd.unavailable:
            self.send_error(500, "dapr is not ready")
        else:
            self.send_response(204)
            self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


# --- the double ---------------------------------------------------------------------------------------


class FakeDaprd:
    """A daprd sidecar double on 127.0.0.1. Use as a context manager, or call start() and stop()/close()."""

    def __init__(
        self,
        app_port: int | None = None,
        app_api_token: str | None = None,
        app_id: str = "image-classifier",
        max_body_bytes: int = 16 << 20,
        resiliency: RetryPolicy | None = RetryPolicy(),  # frozen: safe as a default
        *,
        key_prefix: str = "none",
        dapr_api_token: str | None = None,
        state_stores: Collection[str] | None = None,
        pubsubs: Collection[str] | None = None,
        app_call_timeout_s: float = 60.0,  # how long the double waits for an answer (daprd: forever)
    ) -> None:
        """``key_prefix``: daprd's keyPrefix: "none", "appid", "name" (store name) or a literal prefix.
        ``dapr_api_token``: daprd's DAPR_API_TOKEN; API calls without it get UNAUTHENTICATED.
        ``state_stores``/``pubsubs``: the component names daprd knows (None: any name is accepted).
        """
        if KEY_SEPARATOR in key_prefix:
            raise ValueError(f"keyPrefix may not contain {KEY_SEPARATOR!r}")
        self.app_port = app_port
        self.app_api_token = app_api_token
        self.app_id = app_id
        self.max_body_bytes = max_body_bytes
        self.resiliency = resiliency
        self.key_prefix = key_prefix
        self.dapr_api_token = dapr_api_token
        self.state_stores = None if state_stores is None else frozenset(state_stores)
        self.pubsubs = None if pubsubs is None else frozenset(pubsubs)
        self.app_call_timeout_s = app_call_timeout_s

        self.grpc_port = 0
        self.http_port = 0
        self.unavailable = False
        self.calls: Counter[str] = Counter()

        self._lock = threading.Lock()  # guards state, faults and calls
        self._stores: dict[str, dict[str, _StoredItem]] = {}
        self._faults: dict[str, deque[grpc.StatusCode]] = {}
        self._changed = threading.Condition()  # guards and signals _published, _deliveries
        self._published: list[Published] = []
        self._deliveries: list[tuple[Published, Delivery]] = []
        self._app_subscriptions: list[Subscription] = []  # from ListTopicSubscriptions
        self._declarative_subscriptions: list[Subscription] = []
        self._app_seen = False

        self._grpc_server: grpc.Server | None = None
        self._http_server: _HealthzServer | None = None
        self._http_thread: threading.Thread | None = None
        self._broker: ThreadPoolExecutor | None = None
        self._batchers: dict[tuple[str, str], _Batcher] = {}
        self.batches: list[int] = []  # the entries of each bulk call made to the app
        self._invoke_channel: grpc.Channel | None = None
        self._app_channel: grpc.Channel | None = None

    # --- lifecycle ---

    def start(self) -> FakeDaprd:
        """Start the API servers; ports are picked on the first start and reused afterwards."""
        if self._grpc_server is not None:
            return self
        server = grpc.server(
            ThreadPoolExecutor(max_workers=10, thread_name_prefix="fake-daprd-api"),
            interceptors=[_ApiInterceptor(self)],
            options=[
                ("grpc.max_send_message_length", self.max_body_bytes),
                ("grpc.max_receive_message_length", self.max_body_bytes),
                # Another process must not share our port (grpc enables SO_REUSEPORT by default).
                ("grpc.so_reuseport", 0),
            ],
        )
        dapr_pb2_grpc.add_DaprServicer_to_server(_DaprApi(self), server)
        self.grpc_port = server.add_insecure_port(f"{LOOPBACK}:{self.grpc_port}")
        if self.grpc_port == 0:
            raise OSError("the daprd double could not bind its gRPC port")
        server.start()
        self._grpc_server = server

        http_server = _HealthzServer((LOOPBACK, self.http_port), _HealthzHandler)
        http_server.daprd = self
        self.http_port = http_server.server_address[1]
        self._http_server = http_server
        self._http_thread = threading.Thread(
            target=http_server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-daprd-http",
            daemon=True,
        )
        self._http_thread.start()
        if self._broker is None:
            self._broker = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fake-daprd-broker")
        return self

    def stop(self) -> None:
        """Stop the API servers (state, records and subscriptions are kept)."""
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=0.2).wait(2)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(2)
            self._http_thread = None

    def restart(self, down_s: float = 0.5) -> None:
        """Simulate a sidecar restart: down for ``down_s``, back on the same ports with the same state.
        Like daprd after a restart, the app's subscriptions are read again if the app was seen."""
        self.stop()
        self._close_app_channels()
        time.sleep(down_s)
        self.start()
        if self._app_seen:
            self.wait_for_app(timeout=5.0)

    def close(self) -> None:
        """Stop the servers, close the app channels and wait for in-flight broker deliveries."""
        self.stop()
        for batcher in self._batchers.values():
            batcher.close()
        if self._broker is not None:
            self._broker.shutdown(wait=True, cancel_futures=True)
            self._broker = None
        self._close_app_channels()

    def __enter__(self) -> FakeDaprd:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def env(self) -> dict[str, str]:
        """The environment an app process gets from `dapr run`."""
        env = {
            "DAPR_GRPC_PORT": str(self.grpc_port),
            "DAPR_HTTP_PORT": str(self.http_port),
            "DAPR_RUNTIME_HOST": LOOPBACK,
            "APP_ID": self.app_id,
        }
        if self.app_port is not None:
            env["APP_PORT"] = str(self.app_port)
        if self.app_api_token is not None:
            env["APP_API_TOKEN"] = self.app_api_token
        if self.dapr_api_token is not None:
            env["DAPR_API_TOKEN"] = self.dapr_api_token
        return env

    # --- fault injection ---

    def fail_next(self, rpc_name: str, code: grpc.StatusCode, times: int = 1) -> None:
        """The next ``times`` calls of the Dapr API RPC ``rpc_name`` (e.g. "GetState") fail with ``code``."""
        if rpc_name not in DAPR_SERVICE.methods_by_name:
            raise ValueError(f"the Dapr service has no RPC {rpc_name!r}")
        with self._lock:
            self._faults.setdefault(rpc_name, deque()).extend([code] * times)

    def clear_faults(self) -> None:
        """Drop the faults queued by fail_next that have not been used up."""
        with self._lock:
            self._faults.clear()

    def _admit(self, rpc_name: str, metadata: dict[str, str]) -> tuple[grpc.StatusCode, str] | None:
        """Whether a Dapr API call may run; else the status it fails with."""
        with self._lock:
            self.calls[rpc_name] += 1
            if self.unavailable:
                return grpc.StatusCode.UNAVAILABLE, "the daprd double is unavailable"
            if self.dapr_api_token is not None and metadata.get("dapr-api-token") != self.dapr_api_token:
                return grpc.StatusCode.UNAUTHENTICATED, "authentication error: api token mismatch"
            faults = self._faults.get(rpc_name)
            if faults:
                return faults.popleft(), f"fault injected by the daprd double on {rpc_name}"
        return None

    # --- state ---

    def stored_key(self, store: str, key: str) -> str:
        """The key daprd stores for the app key ``key`` (keyPrefix applied)."""
        if KEY_SEPARATOR in key:
            raise _ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input key/keyPrefix '{key}' can't contain '{KEY_SEPARATOR}'",
            )
        prefix = {"none": "", "appid": self.app_id, "name": store}.get(
            self.key_prefix.lower(), self.key_prefix
        )
        return f"{prefix}{KEY_SEPARATOR}{key}" if prefix else key

    def state(self, store: str) -> dict[str, bytes]:
        """A snapshot of ``store`` by *stored* key (prefixed as daprd stores it)."""
        with self._lock:
            return {key: item.value for key, item in self._stores.get(store, {}).items()}

    def put_raw(self, store: str, key: str, value: bytes) -> None:
        """Write ``value`` under the app key ``key`` behind the app's back (new etag, no checks)."""
        with self._lock:
            items = self._stores.setdefault(store, {})
            self._write(items, self.stored_key(store, key), value)

    def delete_raw(self, store: str, key: str) -> None:
        """Remove the app key ``key`` behind the app's back."""
        with self._lock:
            self._stores.get(store, {}).pop(self.stored_key(store, key), None)

    def corrupt(self, store: str, key: str, value: bytes) -> None:
        """Replace the bytes of an existing app key, keeping its etag (silent corruption)."""
        with self._lock:
            self._stores[store][self.stored_key(store, key)].value = value

    def _store(self, store: str) -> dict[str, _StoredItem]:
        if not store or (self.state_stores is not None and store not in self.state_stores):
            raise _ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"state store {store} is not found")
        return self._stores.setdefault(store, {})

    @staticmethod
    def _write(
        items: dict[str, _StoredItem], stored_key: str, value: bytes, first_write: bool = False
    ) -> None:
        current = items.get(stored_key)
        if current is None:
            items[stored_key] = _StoredItem(value, 1, first_write)
        else:
            items[stored_key] = _StoredItem(value, current.version + 1, first_write or current.first_write)

    @staticmethod
    def _check_etag(
        items: dict[str, _StoredItem], stored_key: str, etag: str | None, first_write: bool
    ) -> None:
        """The Redis state store's rules (components-contrib state/redis/redis.go setDefaultQuery):
        a given etag must match an existing key's version (on a missing key the write creates
        it); first-write without etag fails on an existing key only if a first-write made it,
        and then with INTERNAL "failed to set key", not ABORTED (no etag, so no ETagError)."""
        current = items.get(stored_key)
        if etag:
            if not etag.isdigit():
                raise _ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid etag value: {etag}")
            if current is not None and str(current.version) != etag:
                raise _ApiError(grpc.StatusCode.ABORTED, f"possible etag mismatch for key {stored_key}")
        elif first_write and current is not None and current.first_write:
            raise _ApiError(grpc.StatusCode.INTERNAL, f"failed saving state: failed to set key {stored_key}")

    @staticmethod
    def _etag_of(item: common_pb2.StateItem) -> str | None:
        return item.etag.value if item.HasField("etag") else None

    @staticmethod
    def _first_write(item: common_pb2.StateItem) -> bool:
        return item.options.concurrency == common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE

    def _save_state(self, store: str, states: list[common_pb2.StateItem]) -> None:
        with self._lock:
            items = self._store(store)
            keyed = [(self.stored_key(store, state.key), state) for state in states]
            # Validate everything first so a failed bulk save writes nothing.
            for stored_key, state in keyed:
                self._check_etag(items, stored_key, self._etag_of(state), self._first_write(state))
            for stored_key, state in keyed:
                self._write(items, stored_key, state.value, self._first_write(state))

    def _get_state(self, store: str, key: str) -> _StoredItem | None:
        with self._lock:
            item = self._store(store).get(self.stored_key(store, key))
            return None if item is None else _StoredItem(item.value, item.version)

    def _get_bulk_state(self, store: str, keys: list[str]) -> list[state_pb2.BulkStateItem]:
        with self._lock:
            items = self._store(store)
            result = []
            for key in keys:
                # An illegal key fails the whole request, as daprd's GetBulkState does (api/grpc
                # grpc.go: GetModifiedStateKey before the store is asked); per-item errors are the
                # store's own (a Redis key of another type).
                item = items.get(self.stored_key(store, key))
                if item is None:
                    result.append(state_pb2.BulkStateItem(key=key))
                else:
                    result.append(state_pb2.BulkStateItem(key=key, data=item.value, etag=str(item.version)))
            return result

    def _delete_state(self, store: str, key: str, etag: str | None, first_write: bool) -> None:
        with self._lock:
            items = self._store(store)
            stored_key = self.stored_key(store, key)
            self._check_etag(items, stored_key, etag, False)  # Redis deletes without an etag regardless
            items.pop(stored_key, None)

    def _transact(self, store: str, operations: list[state_pb2.TransactionalStateOperation]) -> None:
        with self._lock:
            items = self._store(store)
            planned = []
            for operation in operations:
                if operation.operationType not in ("upsert", "delete"):
                    raise _ApiError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"operation type {operation.operationType} not supported",
                    )
                request = operation.request
                stored_key = self.stored_key(store, request.key)
                self._check_etag(items, stored_key, self._etag_of(request), self._first_write(request))
                planned.append(
                    (operation.operationType, stored_key, request.value, self._first_write(request))
                )
            # All checks passed: apply atomically.
            for operation_type, stored_key, value, first_write in planned:
                if operation_type == "upsert":
                    self._write(items, stored_key, value, first_write)
                else:
                    items.pop(stored_key, None)

    # --- pub/sub: what the app published ---

    def published(self, topic: str | None = None) -> list[Published]:
        with self._changed:
            return [event for event in self._published if topic is None or event.topic == topic]

    def wait_for_published(self, topic: str, count: int = 1, timeout: float = 5.0) -> list[Published]:
        """Block until ``count`` events were published on ``topic``; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.published(topic)) >= count, timeout):
                raise TimeoutError(
                    f"{len(self.published(topic))} of {count} events published on {topic!r} in {timeout} s"
                )
            return self.published(topic)

    def delivered(self, topic: str | None = None) -> list[tuple[Published, Delivery]]:
        """Broker deliveries to the app (of published events) that have completed."""
        with self._changed:
            return [entry for entry in self._deliveries if topic is None or entry[0].topic == topic]

    def wait_for_delivered(
        self, topic: str, count: int = 1, timeout: float = 5.0
    ) -> list[tuple[Published, Delivery]]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.delivered(topic)) >= count, timeout):
                raise TimeoutError(
                    f"{len(self.delivered(topic))} of {count} deliveries on {topic!r} in {timeout} s"
                )
            return self.delivered(topic)

    def _publish_from_app(self, request: pubsub_pb2.PublishEventRequest) -> None:
        if not request.pubsub_name or (self.pubsubs is not None and request.pubsub_name not in self.pubsubs):
            # daprd 1.18: apierrors.PubSub(name).WithMetadata(nil).NotFound() (pkg/api/grpc/grpc.go)
            raise _ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"pubsub {request.pubsub_name} is not found",
                reason="DAPR_PUBSUB_NOT_FOUND",
            )
        if not request.topic:
            raise _ApiError(
                grpc.StatusCode.INVALID_ARGUMENT, f"topic is empty in pubsub {request.pubsub_name}"
            )
        cloudevent, undeliverable = _cloudevent_from_publish(request, source=self.app_id)
        published = Published(
            pubsub=request.pubsub_name,
            topic=request.topic,
            data=request.data,
            content_type=request.data_content_type,
            metadata=dict(request.metadata),
            event_id=str(cloudevent.get("id", "")),
        )
        self._record(published, cloudevent, undeliverable)

    def _record(self, published: Published, cloudevent: dict[str, Any], undeliverable: str | None) -> None:
        """Record a publish and, like a broker, hand it to the app's subscription in the background."""
        with self._changed:
            self._published.append(published)
            self._changed.notify_all()
        subscription = self._subscription(published.pubsub, published.topic)
        if subscription is None or self._broker is None:
            return
        self._broker.submit(self._broker_delivery, subscription, published, cloudevent, undeliverable)

    def _broker_delivery(
        self,
        subscription: Subscription,
        published: Published,
        cloudevent: dict[str, Any],
        undeliverable: str | None,
    ) -> None:
        raw_published = cloudevent.pop("raw", False)
        if subscription.metadata.get("rawPayload", "").lower() == "true":
            # daprd wraps whatever bytes are on the broker as octet-stream (FromRawPayload).
            broker_bytes = published.data if raw_published else _go_json(cloudevent)
            cloudevent = {
                "id": str(uuid.uuid4()),
                "source": "Dapr",
                "type": CLOUDEVENT_TYPE,
                "specversion": "1.0",
                "datacontenttype": "application/octet-stream",
                "data_base64": base64.b64encode(broker_bytes).decode(),
            }
        elif raw_published:
            # daprd parses broker bytes as a CloudEvent; raw bytes rarely are one.
            try:
                cloudevent = json.loads(published.data)
            except ValueError:
                cloudevent = None
            if not isinstance(cloudevent, dict):
                cloudevent = {}
                undeliverable = "a raw payload reached a subscription without rawPayload"
        if undeliverable is not None:
            # daprd cannot parse the broker bytes as a CloudEvent: it never calls the app, sends the
            # bytes as they are to the dead-letter topic, else fails the message (which Redis Streams
            # then acks: gone) (dapr pkg/runtime/subscription/subscription.go:266-283).
            dead = self._dead_letter_broker(subscription, published, {"raw": True})
            delivery = Delivery("RETRY", 0, dead, last_error=undeliverable)
        else:
            in_batch = subscription.bulk_max_messages > 0
            try:
                traceparent = str(cloudevent.get("traceparent") or _traceparent())
                event = _event_for_app(
                    cloudevent, published.pubsub, published.topic, traceparent, published, in_batch
                )
            except (binascii.Error, ValueError) as error:
                # A bad data_base64 fails inside the delivery (subscriptions.go:354-368), so the
                # resiliency policy retries it, then it is dead-lettered (subscription.go:358-405).
                attempts = 1 + (self.resiliency.max_retries if self.resiliency else 0)
                for _ in range(attempts - 1):
                    time.sleep(self.resiliency.interval_s if self.resiliency else 0)
                dead = self._dead_letter_broker(subscription, published, cloudevent)
                delivery = Delivery("RETRY", attempts, dead, last_error=str(error))
            else:
                if in_batch:  # this broker worker waits for its batch, as Redis' does
                    delivery = self._batcher(subscription).deliver(event)
                else:
                    delivery = self._deliver_event(subscription, event)
        with self._changed:
            self._deliveries.append((published, delivery))
            self._changed.notify_all()

    # --- the app channel ---

    def _channels(self) -> tuple[grpc.Channel, grpc.Channel]:
        if self.app_port is None:
            raise RuntimeError("this FakeDaprd was created without an app_port")
        with self._lock:
            if self._app_channel is None or self._invoke_channel is None:
                target = f"{LOOPBACK}:{self.app_port}"
                # OnInvoke runs with --max-body-size limits; the other calls use grpc defaults.
                self._invoke_channel = grpc.insecure_channel(
                    target,
                    options=[
                        ("grpc.max_send_message_length", self.max_body_bytes),
                        ("grpc.max_receive_message_length", self.max_body_bytes),
                    ],
                )
                self._app_channel = grpc.insecure_channel(target)
            return self._app_channel, self._invoke_channel

    def reset_app_channels(self) -> None:
        """Drop the channels to the app so the next call connects afresh: after the app restarted,
        the old ones may still be in gRPC's reconnect backoff."""
        self._close_app_channels()

    def _close_app_channels(self) -> None:
        with self._lock:
            channels, self._app_channel, self._invoke_channel = (
                (self._app_channel, self._invoke_channel),
                None,
                None,
            )
        for channel in channels:
            if channel is not None:
                channel.close()

    def _app_metadata(
        self, token: str | _UseConfiguredToken | None, caller_traceparent: str = ""
    ) -> list[tuple[str, str]]:
        if isinstance(token, _UseConfiguredToken):
            token = self.app_api_token
        metadata = [("traceparent", _traceparent(caller_traceparent))]
        if token is not None:
            metadata.append(("dapr-api-token", token))
        return metadata

    @property
    def subscriptions(self) -> list[Subscription]:
        return self._app_subscriptions + self._declarative_subscriptions

    def add_subscription(
        self,
        pubsub: str,
        topic: str,
        *,
        route: str = "",
        dead_letter_topic: str = "",
        metadata: dict[str, str] | None = None,
    ) -> Subscription:
        """A declarative (YAML) Subscription: delivered on ``route`` whether or not the app handles it."""
        subscription = Subscription(pubsub, topic, (), dead_letter_topic, dict(metadata or {}), route)
        self._declarative_subscriptions = [*self._declarative_subscriptions, subscription]
        return subscription

    def wait_for_app(self, timeout: float = 5.0) -> list[Subscription]:
        """Wait for the app port to accept TCP, then read its subscriptions like daprd at startup."""
        if self.app_port is None:
            raise RuntimeError("this FakeDaprd was created without an app_port")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((LOOPBACK, self.app_port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the app port {self.app_port} did not open in {timeout} s") from None
                time.sleep(0.02)

        app_channel, _ = self._channels()
        stub = appcallback_pb2_grpc.AppCallbackStub(app_channel)
        # daprd's built-in init policy: 3 retries; no token on this call.
        for attempt in range(4):
            try:
                response = stub.ListTopicSubscriptions(
                    empty_pb2.Empty(), timeout=max(0.1, deadline - time.monotonic())
                )
                break
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    response = appcallback_pb2.ListTopicSubscriptionsResponse()
                    break
                if attempt == 3 or time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"ListTopicSubscriptions failed: {error.code().name} {error.details()}"
                    ) from error
                time.sleep(0.1)
        self._app_subscriptions = [self._parse_subscription(s) for s in response.subscriptions]
        self._app_seen = True
        return self.subscriptions

    @staticmethod
    def _parse_subscription(subscription: appcallback_pb2.TopicSubscription) -> Subscription:
        """daprd's parseRoutingRulesGRPC: rules in order, then the default, else path ""."""
        routes = tuple(Route(rule.match, rule.path) for rule in subscription.routes.rules)
        for route in routes:
            _compile_cel(route.match)  # fail at load time, as daprd does for invalid CEL
        if not subscription.HasField("routes"):
            default_path: str | None = ""
        elif subscription.routes.default:
            default_path = subscription.routes.default
        else:
            default_path = None if routes else ""
        bulk = subscription.bulk_subscribe
        return Subscription(
            pubsub=subscription.pubsub_name,
            topic=subscription.topic,
            routes=routes,
            dead_letter_topic=subscription.dead_letter_topic,
            metadata=dict(subscription.metadata),
            default_path=default_path,
            # daprd's defaults for 0 (pkg/runtime/pubsub/default_bulksub.go:26-29, 68-71).
            bulk_max_messages=(bulk.max_messages_count or 100) if bulk.enabled else 0,
            bulk_max_await_ms=(bulk.max_await_duration_ms or 1000) if bulk.enabled else 0,
        )

    def _subscription(self, pubsub: str, topic: str) -> Subscription | None:
        return next((s for s in self.subscriptions if s.pubsub == pubsub and s.topic == topic), None)

    def health_check(self) -> bool:
        """AppCallbackHealthCheck.HealthCheck without token, as daprd's app health probe."""
        app_channel, _ = self._channels()
        try:
            appcallback_pb2_grpc.AppCallbackHealthCheckStub(app_channel).HealthCheck(
                empty_pb2.Empty(), timeout=min(self.app_call_timeout_s, 2.0)
            )
        except grpc.RpcError:
            return False
        return True

    def wait_healthy(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.health_check():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the app was not healthy within {timeout} s")
            time.sleep(0.05)

    def invoke(
        self,
        method: str,
        data: bytes,
        content_type: str = "application/json",
        metadata: dict[str, str] | None = None,
        *,
        token: str | _UseConfiguredToken | None = CONFIGURED_TOKEN,
        caller_app_id: str = FAKE_CALLER_APP_ID,
        querystring: str = "",
    ) -> InvokeResult:
        """OnInvoke as daprd sends an HTTP-originated invocation (POST, raw body in Any.value,
        the URL's query string in http_extension)."""
        request = common_pb2.InvokeRequest(
            method=method,
            data=any_pb2.Any(value=data),
            content_type=content_type,
            http_extension=common_pb2.HTTPExtension(
                verb=common_pb2.HTTPExtension.Verb.POST, querystring=querystring
            ),
        )
        return self._call_on_invoke(request, metadata, token, caller_app_id)

    def invoke_packed(
        self,
        method: str,
        message: Message,
        metadata: dict[str, str] | None = None,
        *,
        token: str | _UseConfiguredToken | None = CONFIGURED_TOKEN,
        caller_app_id: str = FAKE_CALLER_APP_ID,
    ) -> InvokeResult:
        """OnInvoke with a protobuf message packed in Any (type_url set), as a gRPC caller sends it."""
        packed = any_pb2.Any()
        packed.Pack(message)
        request = common_pb2.InvokeRequest(method=method, data=packed)
        return self._call_on_invoke(request, metadata, token, caller_app_id)

    def _call_on_invoke(
        self,
        request: common_pb2.InvokeRequest,
        metadata: dict[str, str] | None,
        token: str | _UseConfiguredToken | None,
        caller_app_id: str,
    ) -> InvokeResult:
        _, invoke_channel = self._channels()
        caller = dict(metadata or {})
        call_metadata = [
            *self._app_metadata(token, caller.pop("traceparent", "")),
            *caller.items(),
            ("dapr-caller-app-id", caller_app_id),
            ("dapr-callee-app-id", self.app_id),
        ]
        # As daprd: OnInvoke carries no deadline (dapr pkg/channel/grpc/grpc_channel.go:218 calls
        # the app on context.Background()), so the app bounds the work itself. The double only
        # stops waiting after app_call_timeout_s, so that a hung app cannot hang a test.
        future = appcallback_pb2_grpc.AppCallbackStub(invoke_channel).OnInvoke.future(
            request, metadata=call_metadata
        )
        try:
            response = future.result(timeout=self.app_call_timeout_s)
        except grpc.FutureTimeoutError:
            future.cancel()
            return InvokeResult(grpc.StatusCode.DEADLINE_EXCEEDED, b"", "", "the double stopped waiting")
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            details = tuple(status.details) if status is not None else ()
            return InvokeResult(error.code(), b"", "", error.details() or "", status_details=details)
        except ValueError as error:  # restart() closed the channel under this call
            return InvokeResult(grpc.StatusCode.CANCELLED, b"", "", str(error))
        return InvokeResult(
            grpc.StatusCode.OK, response.data.value, response.content_type, "", response.data.type_url
        )

    def deliver(
        self,
        pubsub: str,
        topic: str,
        data: bytes,
        content_type: str = "application/json",
        *,
        event_id: str | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> Delivery:
        """Deliver one event to the app synchronously, exactly as given (no envelope conversion)."""
        subscription = self._subscription(pubsub, topic)
        if subscription is None:
            return Delivery("DROP", 0, False)
        event = _given_event(pubsub, topic, data, content_type, event_id or str(uuid.uuid4()), extensions)
        return self._deliver_event(subscription, event)

    def _deliver_event(self, subscription: Subscription, event: _Event) -> Delivery:
        """daprd's gRPC postman plus the subscription's retry and dead-letter handling."""
        path = subscription.path_for(event.attributes())
        if path is None:
            return Delivery("DROP", 0, self._dead_letter(subscription, event))
        extensions = struct_pb2.Struct()
        extensions.update(event.extensions)
        request = appcallback_pb2.TopicEventRequest(
            id=event.id,
            source=event.source,
            type=event.type,
            spec_version=event.spec_version,
            data_content_type=event.data_content_type,
            data=event.data,
            topic=subscription.topic,
            pubsub_name=subscription.pubsub,
            path=path,
            extensions=extensions,
        )
        max_attempts = 1 + (self.resiliency.max_retries if self.resiliency else 0)
        attempts = 0
        while True:
            attempts += 1
            outcome, error = self._call_on_topic_event(request)
            if outcome == "SUCCESS":
                return Delivery("SUCCESS", attempts, False)
            if outcome == "UNIMPLEMENTED":
                # Acked as handled, not dead-lettered (dapr .../postman/grpc/grpc.go:102-108).
                return Delivery("DROP", attempts, False, error)
            if outcome == "DROP":
                return Delivery("DROP", attempts, self._dead_letter(subscription, event), error)
            if attempts >= max_attempts:
                return Delivery("RETRY", attempts, self._dead_letter(subscription, event), error)
            time.sleep(self.resiliency.interval_s if self.resiliency else 0)

    # --- bulk subscribe ---

    def _batcher(self, subscription: Subscription) -> _Batcher:
        key = (subscription.pubsub, subscription.topic)
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None or batcher.subscription != subscription:
                if batcher is not None:
                    batcher.close()
                batcher = self._batchers[key] = _Batcher(self, subscription)
            return batcher

    def deliver_batch(self, pubsub: str, topic: str, events: list[tuple[bytes, str, str]]) -> list[Delivery]:
        """Deliver one batch of (data, content type, event id) to the app synchronously, as
        daprd's bulk subscriber would hand it over (no envelope conversion)."""
        subscription = self._subscription(pubsub, topic)
        if subscription is None:
            return [Delivery("DROP", 0, False) for _ in events]
        batch = [_given_event(pubsub, topic, data, kind, event_id) for data, kind, event_id in events]
        return self._deliver_batch(subscription, batch)

    def _deliver_batch(self, subscription: Subscription, events: list[_Event]) -> list[Delivery]:
        """daprd's bulk handler (pkg/runtime/subscription/bulksubscription.go:73-214) and gRPC
        postman (pkg/runtime/subscription/postman/grpc/grpc.go:151-365) for one batch:
        - events no route matches are dropped (to the dead-letter topic) before the call;
        - one OnBulkTopicEvent call per route path, OnBulkTopicEventAlpha1 if it is UNIMPLEMENTED;
          UNIMPLEMENTED again drops every entry, not dead-lettered; another error fails them all;
        - per entry: SUCCESS acks; DROP acks and dead-letters it at once; RETRY, an unknown status
          or no status for an entry (an unknown entry id is ignored) fails it;
        - the resiliency policy calls again with the failed entries only (bulkresiliency.go:45-53);
          what still fails goes to the dead-letter topic, if any (bulksubscription.go:196-209)."""
        deliveries: list[Delivery | None] = [None] * len(events)
        by_path: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            path = subscription.path_for(event.attributes())
            if path is None:
                deliveries[index] = Delivery("DROP", 0, self._dead_letter(subscription, event))
            else:
                by_path.setdefault(path, []).append(index)
        max_attempts = 1 + (self.resiliency.max_retries if self.resiliency else 0)
        for path, indexes in by_path.items():
            entry_ids = {str(uuid.uuid4()): index for index in indexes}
            failing = dict(entry_ids)
            attempts, error = 0, ""
            while failing:
                attempts += 1
                statuses, error = self._call_on_bulk_topic_event(subscription, path, events, failing)
                if statuses is None:  # UNIMPLEMENTED twice: every entry dropped
                    for index in failing.values():
                        deliveries[index] = Delivery("DROP", attempts, False, error)
                    failing = {}
                    break
                for entry_id, status in statuses.items():
                    index = failing.get(entry_id)
                    if index is None:
                        continue  # daprd: "Invalid entry id received from app"
                    if status == "SUCCESS":
                        deliveries[index] = Delivery("SUCCESS", attempts, False)
                    elif status == "DROP":
                        dead = self._dead_letter(subscription, events[index])
                        deliveries[index] = Delivery("DROP", attempts, dead)
                    else:
                        continue
                    del failing[entry_id]
                if not failing or attempts >= max_attempts:
                    break
                time.sleep(self.resiliency.interval_s if self.resiliency else 0)
            for index in failing.values():
                dead = self._dead_letter(subscription, events[index])
                deliveries[index] = Delivery("RETRY", attempts, dead, error or "no SUCCESS for the entry")
        return [delivery for delivery in deliveries if delivery is not None]

    def _call_on_bulk_topic_event(
        self, subscription: Subscription, path: str, events: list[_Event], entry_ids: dict[str, int]
    ) -> tuple[dict[str, DeliveryStatus] | None, str]:
        """One bulk call: {entry id: status} (a failed call: every entry RETRY), or None when the
        app implements neither RPC."""
        entries = []
        for entry_id, index in entry_ids.items():
            event = events[index]
            extensions = struct_pb2.Struct()
            extensions.update(event.extensions)
            entries.append(
                appcallback_pb2.TopicEventBulkRequestEntry(
                    entry_id=entry_id,
                    cloud_event=appcallback_pb2.TopicEventCERequest(
                        id=event.id,
                        source=event.source,
                        type=event.type,
                        spec_version=event.spec_version,
                        data_content_type=event.data_content_type,
                        data=event.data,
                        extensions=extensions,
                    ),
                    content_type="application/cloudevents+json",
                )
            )
        request = appcallback_pb2.TopicEventBulkRequest(
            id=str(uuid.uuid4()),
            entries=entries,
            topic=subscription.topic,
            pubsub_name=subscription.pubsub,
            type="com.dapr.event.sent.bulk",
            path=path,
        )
        with self._changed:
            self.batches.append(len(entries))
        app_channel, _ = self._channels()
        metadata = self._app_metadata(CONFIGURED_TOKEN)
        failed: dict[str, DeliveryStatus] = dict.fromkeys(entry_ids, "RETRY")
        try:
            try:
                response = appcallback_pb2_grpc.AppCallbackStub(app_channel).OnBulkTopicEvent(
                    request, metadata=metadata, timeout=self.app_call_timeout_s
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                response = appcallback_pb2_grpc.AppCallbackAlphaStub(app_channel).OnBulkTopicEventAlpha1(
                    request, metadata=metadata, timeout=self.app_call_timeout_s
                )
        except grpc.RpcError as error:
            described = f"{error.code().name}: {error.details()}"
            return (None if error.code() == grpc.StatusCode.UNIMPLEMENTED else failed), described
        except ValueError as error:  # restart() closed the channel under this call
            return failed, str(error)
        names: dict[int, DeliveryStatus] = {
            appcallback_pb2.TopicEventResponse.SUCCESS: "SUCCESS",
            appcallback_pb2.TopicEventResponse.DROP: "DROP",
        }
        return {entry.entry_id: names.get(entry.status, "RETRY") for entry in response.statuses}, ""

    def _call_on_topic_event(self, request: appcallback_pb2.TopicEventRequest) -> tuple[str, str]:
        app_channel, _ = self._channels()
        # daprd's delivery span is a child of the event's trace (pkg/runtime/pubsub/subscriptions.go:389-405).
        fields = request.extensions.fields
        event_trace = fields["traceparent"].string_value if "traceparent" in fields else ""
        try:
            response = appcallback_pb2_grpc.AppCallbackStub(app_channel).OnTopicEvent(
                request,
                metadata=self._app_metadata(CONFIGURED_TOKEN, event_trace),
                timeout=self.app_call_timeout_s,
            )
        except grpc.RpcError as error:
            described = f"{error.code().name}: {error.details()}"
            # UNIMPLEMENTED means no handler for the route: daprd drops instead of retrying.
            return ("UNIMPLEMENTED" if error.code() == grpc.StatusCode.UNIMPLEMENTED else "RETRY"), described
        except ValueError as error:  # restart() closed the channel under this call
            return "RETRY", str(error)
        statuses: dict[int, DeliveryStatus] = {
            appcallback_pb2.TopicEventResponse.SUCCESS: "SUCCESS",
            appcallback_pb2.TopicEventResponse.DROP: "DROP",
        }
        # RETRY and unknown enum values are retried.
        return statuses.get(response.status, "RETRY"), ""

    def _dead_letter_broker(
        self, subscription: Subscription, published: Published, cloudevent: dict[str, Any]
    ) -> bool:
        """Forward what is on the broker (the CloudEvent, or raw bytes) to the dead-letter topic."""
        if not subscription.dead_letter_topic:
            return False
        dead = Published(
            pubsub=subscription.pubsub,
            topic=subscription.dead_letter_topic,
            data=published.data,
            content_type=published.content_type,
            metadata=dict(published.metadata),
            event_id=published.event_id,
        )
        if cloudevent.get("raw"):
            cloudevent = {"data_base64": base64.b64encode(published.data).decode(), "raw": True}
        self._record(dead, dict(cloudevent), None)
        return True

    def _dead_letter(self, subscription: Subscription, event: _Event) -> bool:
        """Forward the original message to the dead-letter topic, if the subscription has one."""
        if not subscription.dead_letter_topic:
            return False
        published = Published(
            pubsub=subscription.pubsub,
            topic=subscription.dead_letter_topic,
            data=event.published_data,
            content_type=event.published_content_type,
            metadata={},
            event_id=event.id,
        )
        cloudevent: dict[str, Any] = {
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "specversion": event.spec_version,
            "datacontenttype": event.data_content_type,
            "data_base64": base64.b64encode(event.data).decode(),
        }
        self._record(published, cloudevent, None)
        return True


class _Batcher:
    """daprd's default bulk subscriber for one subscription (pkg/runtime/pubsub/default_bulksub.go
    :67-236): the broker's workers hand their messages over and wait; a batch is flushed when it
    has bulk_max_messages entries or bulk_max_await_ms after its first arrived; one batch at a
    time. With Redis a batch is at most the component's `concurrency` messages (its workers)."""

    def __init__(self, daprd: FakeDaprd, subscription: Subscription) -> None:
        self.daprd = daprd
        self.subscription = subscription
        self._queue: queue.Queue[tuple[_Event, list[Delivery], threading.Event] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fake-daprd-bulk", daemon=True)
        self._thread.start()

    def deliver(self, event: _Event) -> Delivery:
        answered: list[Delivery] = []
        done = threading.Event()
        self._queue.put((event, answered, done))
        done.wait()
        return answered[0] if answered else Delivery("RETRY", 0, False, "the double closed")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.daprd.app_call_timeout_s)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.subscription.bulk_max_await_ms / 1000
            closing = False
            while len(batch) < self.subscription.bulk_max_messages:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            try:
                deliveries = self.daprd._deliver_batch(self.subscription, [event for event, _, _ in batch])
            except Exception as error:  # the app's channel is gone: every entry failed
                deliveries = [Delivery("RETRY", 1, False, str(error)) for _ in batch]
            for (_, answered, done), delivery in zip(batch, deliveries, strict=True):
                answered.append(delivery)
                done.set()
            if closing:
                return


__all__ = [
    "CONFIGURED_TOKEN",
    "Delivery",
    "FakeDaprd",
    "InvokeResult",
    "Published",
    "RetryPolicy",
    "Route",
    "Subscription",
]
