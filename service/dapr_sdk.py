"""Every use of the Dapr Python SDK's private API, in one place.

The SDK's public API lacks four things the service needs: the gRPC server under `App` (to bind port 0,
add an interceptor's effects and stop with a grace period), channel options for `DaprClient` (a sidecar
restart must be picked up in seconds, not on gRPC's default 120 s backoff), the state options type
(exported only from a private module), and bulk subscription (the SDK answers OnBulkTopicEvent but
never asks daprd for it, and runs a batch's entries one after another). `check()` verifies that what
is used here still exists in the shape used; tests/test_dapr_sdk.py calls it, so an SDK upgrade that
changes any of it fails there.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from dapr.clients import DaprClient
from dapr.clients.grpc._state import Concurrency, Consistency, StateOptions
from dapr.clients.grpc.client import DaprGrpcClient
from dapr.clients.health import DaprHealth
from dapr.ext.grpc import App, SubscriptionMessage
from dapr.proto.runtime.v1 import appcallback_pb2

__all__ = [
    "Concurrency",
    "Consistency",
    "StateOptions",
    "grpc_server",
    "sidecar_client",
    "subscribe_bulk",
]

# gRPC's default reconnect backoff grows to 120 s: after a sidecar restart the long-lived
# client stayed disconnected for up to half the outage again (16 s after a 30 s outage),
# answering RETRY to every event meanwhile.
RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
_CHANNEL_PATCH = threading.Lock()


def grpc_server(app: App) -> grpc.Server:
    """The gRPC server `App` runs on (the SDK has no public way to bind port 0 or to stop with
    a grace period)."""
    server: grpc.Server = app._server
    return server


BULK_STATUS = {
    "success": appcallback_pb2.TopicEventResponse.SUCCESS,
    "retry": appcallback_pb2.TopicEventResponse.RETRY,
    "drop": appcallback_pb2.TopicEventResponse.DROP,
}


def subscribe_bulk(
    app: App,
    pubsub: str,
    topic: str,
    max_messages: int,
    max_await_ms: int,
    handle_batch: Callable[[Sequence[SubscriptionMessage]], Sequence[str]],
) -> None:
    """Ask daprd to deliver `topic` (subscribed already with `app.subscribe`) in batches, and answer
    them with `handle_batch`: the answer ("success", "retry" or "drop") of each message, in order.
    OnBulkTopicEvent and OnBulkTopicEventAlpha1 both call the servicer's `_handle_bulk_topic_event`;
    other topics' batches still go to the SDK's."""
    servicer = app._servicer
    config = appcallback_pb2.BulkSubscribeConfig(
        enabled=True, max_messages_count=max_messages, max_await_duration_ms=max_await_ms
    )
    subscriptions = [s for s in servicer._registered_topics if s.pubsub_name == pubsub and s.topic == topic]
    if not subscriptions:
        raise ValueError(f"subscribe to {pubsub}/{topic} before asking for it in bulk")
    for subscription in subscriptions:
        subscription.bulk_subscribe.CopyFrom(config)
    sdk_handler = servicer._handle_bulk_topic_event

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if request.pubsub_name != pubsub or request.topic != topic:
            return sdk_handler(request, context)
        metadata = dict(context.invocation_metadata())
        messages = [servicer._bulk_entry_subscription_message(e, request, metadata) for e in request.entries]
        answers = handle_batch(messages)
        return appcallback_pb2.TopicEventBulkResponse(
            statuses=[
                appcallback_pb2.TopicEventBulkResponseEntry(
                    entry_id=entry.entry_id, status=BULK_STATUS[answer]
                )
                for entry, answer in zip(request.entries, answers, strict=True)
            ]
        )

    servicer._handle_bulk_topic_event = handle  # type: ignore[method-assign]  # per instance: this topic only


def sidecar_client(max_message_bytes: int | None = None) -> DaprClient:
    """A DaprClient whose channel reconnects to a restarted sidecar within ~2 s. Blocks until
    the sidecar is healthy (DAPR_HEALTH_TIMEOUT), as DaprClient does.

    DaprClient takes no channel options; it creates its channel with `grpc.insecure_channel` (or
    `secure_channel`), so those are wrapped, under a lock, while it is constructed."""
    DaprHealth.wait_for_sidecar()  # before patching, so the patch is held only briefly
    with _CHANNEL_PATCH:
        insecure, secure = grpc.insecure_channel, grpc.secure_channel

        def insecure_channel(target: str, options: Any = None, compression: Any = None) -> grpc.Channel:
            return insecure(target, [*(options or ()), *RECONNECT_OPTIONS], compression)

        def secure_channel(
            target: str, credentials: Any, options: Any = None, compression: Any = None
        ) -> grpc.Channel:
            return secure(target, credentials, [*(options or ()), *RECONNECT_OPTIONS], compression)

        grpc.insecure_channel, grpc.secure_channel = insecure_channel, secure_channel
        try:
            return DaprClient(max_grpc_message_length=max_message_bytes)
        finally:
            grpc.insecure_channel, grpc.secure_channel = insecure, secure


def check() -> None:
    """Raise AssertionError if the private parts used here changed."""
    assert isinstance(grpc_server(App()), grpc.Server), "App._server is no longer the gRPC server"
    source = inspect.getsource(DaprGrpcClient.__init__)
    assert "grpc.insecure_channel(" in source and "grpc.secure_channel(" in source, (
        "DaprClient no longer creates its channel with grpc.insecure_channel/secure_channel"
    )
    assert {"first_write", "last_write"} <= set(Concurrency.__members__), "Concurrency changed"
    assert "strong" in Consistency.__members__, "Consistency changed"
    servicer = App()._servicer
    assert isinstance(servicer._registered_topics, list), "the servicer's _registered_topics changed"
    for rpc in ("OnBulkTopicEvent", "OnBulkTopicEventAlpha1"):
        source = inspect.getsource(getattr(type(servicer), rpc))
        assert "self._handle_bulk_topic_event(" in source, f"{rpc} no longer calls _handle_bulk_topic_event"
    parameters = inspect.signature(servicer._bulk_entry_subscription_message).parameters
    assert list(parameters) == ["entry", "request", "invocation_metadata"], "bulk entry messages changed"
    assert "concurrency" in inspect.signature(StateOptions).parameters, "StateOptions changed"
