"""Every use of the Dapr Python SDK's private API, in one place.

The SDK's public API lacks three things the service needs: the gRPC server under `App` (to bind port 0,
add an interceptor's effects and stop with a grace period), channel options for `DaprClient` (a sidecar
restart must be picked up in seconds, not on gRPC's default 120 s backoff), and the state options type
(exported only from a private module). `check()` verifies that what is used here still exists in the
shape used; tests/test_dapr_sdk.py calls it, so an SDK upgrade that changes any of it fails there.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

import grpc
from dapr.clients import DaprClient
from dapr.clients.grpc._state import Concurrency, Consistency, StateOptions
from dapr.clients.grpc.client import DaprGrpcClient
from dapr.clients.health import DaprHealth
from dapr.ext.grpc import App

__all__ = ["Concurrency", "Consistency", "StateOptions", "grpc_server", "sidecar_client"]

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
    assert "concurrency" in inspect.signature(StateOptions).parameters, "StateOptions changed"
