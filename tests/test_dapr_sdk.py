"""The Dapr SDK's private API that the service uses (service/dapr_sdk.py) is still there."""

from __future__ import annotations

import grpc

from service import dapr_sdk


def test_the_private_sdk_api_used_is_still_there() -> None:
    """An SDK upgrade that renames App._server, changes how DaprClient makes its channel or moves
    the state options must fail here, not as a service that cannot start or reconnect."""
    dapr_sdk.check()


def test_sidecar_client_channels_get_the_reconnect_options(monkeypatch) -> None:
    """DaprClient's channel is made with the reconnect backoff (a restarted sidecar is found in
    seconds); the patch is undone afterwards."""
    seen: list[object] = []
    original = grpc.insecure_channel

    def recording(target, options=None, compression=None):  # type: ignore[no-untyped-def]
        seen.append(options)
        return original(target, options, compression)

    monkeypatch.setattr(grpc, "insecure_channel", recording)
    monkeypatch.setattr(dapr_sdk.DaprHealth, "wait_for_sidecar", staticmethod(lambda: None))
    client = dapr_sdk.sidecar_client(8 << 20)
    try:
        assert seen and all(o in seen[-1] for o in dapr_sdk.RECONNECT_OPTIONS)
        assert ("grpc.max_receive_message_length", 8 << 20) in seen[-1]
        assert grpc.insecure_channel is recording  # restored
    finally:
        client.close()


def test_bulk_delivery_is_asked_for_a_topic_subscribed_first() -> None:
    import pytest
    from dapr.ext.grpc import App

    app = App()
    with pytest.raises(ValueError) as exc:
        dapr_sdk.subscribe_bulk(app, "pubsub", "images", 32, 20, lambda messages: [])
    assert str(exc.value) == "subscribe to pubsub/images before asking for it in bulk"


def test_a_tls_sidecar_endpoints_channel_gets_the_reconnect_options_too(monkeypatch) -> None:
    """DAPR_GRPC_ENDPOINT=host:port?tls=true: DaprClient makes a secure channel, wrapped alike."""
    from dapr.conf import settings

    seen: list[object] = []
    original = grpc.secure_channel

    def recording(target, credentials, options=None, compression=None):  # type: ignore[no-untyped-def]
        seen.append((target, options))
        return original(target, credentials, options, compression)

    monkeypatch.setattr(grpc, "secure_channel", recording)
    monkeypatch.setattr(settings, "DAPR_GRPC_ENDPOINT", "localhost:50443?tls=true")
    monkeypatch.setattr(dapr_sdk.DaprHealth, "wait_for_sidecar", staticmethod(lambda: None))
    client = dapr_sdk.sidecar_client()
    try:
        ((target, options),) = seen
        assert target == "dns:localhost:50443" and all(o in options for o in dapr_sdk.RECONNECT_OPTIONS)
        assert grpc.secure_channel is recording  # restored
    finally:
        client.close()
