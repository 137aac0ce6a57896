"""The daprd double's own contract, proven with the real Dapr SDK: DaprClient on one side, a tiny
dapr.ext.grpc App on the other, everything over loopback gRPC."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.ext.grpc import (
    App,
    InvokeMethodRequest,
    InvokeMethodResponse,
    SubscriptionMessage,
    TopicEventResponse,
)
from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2
from daprd import FakeDaprd, RetryPolicy
from google.protobuf import struct_pb2

from service.dapr_sdk import Concurrency, StateOptions, grpc_server

STORE = "statestore"
APP_TOKEN = "app-secret"

ClientEnv = Callable[[FakeDaprd], None]


# --- a tiny real app -------------------------------------------------------------------------------


@dataclass
class TinyApp:
    app: App
    port: int
    attempts: Counter[str] = field(default_factory=Counter)
    accepted: list[SubscriptionMessage] = field(default_factory=list)
    invocations: list[InvokeMethodRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_tiny_app() -> TinyApp:
    """An App with `echo`, a subscription on pubsub/t (dead letters to t-dead) and a health check.
    The subscriber's answer depends on the data: ok, drop, retry, raise, or flaky:N (RETRY N times)."""
    app = App()
    tiny = TinyApp(app=app, port=0)

    def echo(request: InvokeMethodRequest) -> InvokeMethodResponse | struct_pb2.Struct:
        tiny.invocations.append(request)
        if request.is_proto():
            message = struct_pb2.Struct()
            request.unpack(message)
            return message
        return InvokeMethodResponse(request.data, request.content_type)

    def on_t(event: SubscriptionMessage) -> TopicEventResponse:
        data = event.raw_data()
        with tiny.lock:
            tiny.attempts[event.id()] += 1
            attempt = tiny.attempts[event.id()]
        if data == b"drop":
            return TopicEventResponse("drop")
        if data == b"retry":
            return TopicEventResponse("retry")
        if data == b"raise":
            raise RuntimeError("handler failed")
        if data.startswith(b"flaky:") and attempt <= int(data.removeprefix(b"flaky:")):
            return TopicEventResponse("retry")
        tiny.accepted.append(event)
        return TopicEventResponse("success")

    app.method("echo")(echo)
    app.subscribe(pubsub_name="pubsub", topic="t", dead_letter_topic="t-dead")(on_t)
    app.register_health_check(lambda: None)
    # App.run() blocks; start its server ourselves on a free loopback port.
    tiny.port = grpc_server(app).add_insecure_port("127.0.0.1:0")
    grpc_server(app).start()
    return tiny


@pytest.fixture
def tiny_app() -> Iterator[TinyApp]:
    tiny = start_tiny_app()
    yield tiny
    grpc_server(tiny.app).stop(0).wait(2)


@pytest.fixture
def daprd(tiny_app: TinyApp) -> Iterator[FakeDaprd]:
    with FakeDaprd(app_port=tiny_app.port, app_api_token=APP_TOKEN) as double:
        double.wait_for_app(timeout=5)
        yield double


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch) -> ClientEnv:
    """Point DaprClient at a double through the environment, as `dapr run` does."""

    def apply(double: FakeDaprd) -> None:
        for name in ("DAPR_GRPC_ENDPOINT", "DAPR_HTTP_ENDPOINT", "DAPR_API_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for name, value in double.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("DAPR_HEALTH_TIMEOUT", "3")

    return apply


@pytest.fixture
def sidecar(client_env: ClientEnv) -> Iterator[FakeDaprd]:
    with FakeDaprd() as double:
        client_env(double)
        yield double


# --- Dapr API with the real DaprClient -------------------------------------------------------------


def test_env_describes_the_double() -> None:
    with FakeDaprd(app_port=1234, app_api_token="t", app_id="classifier") as double:
        env = double.env()
    assert env == {
        "DAPR_GRPC_PORT": str(double.grpc_port),
        "DAPR_HTTP_PORT": str(double.http_port),
        "DAPR_RUNTIME_HOST": "127.0.0.1",
        "APP_PORT": "1234",
        "APP_ID": "classifier",
        "APP_API_TOKEN": "t",
    }


def test_state_round_trip_with_etags(sidecar: FakeDaprd) -> None:
    with DaprClient() as client:
        assert client.get_state(STORE, "model").data == b""  # missing: empty, not an error
        client.save_state(STORE, "model", b"\x00v1")
        first = client.get_state(STORE, "model")
        assert (first.data, first.etag) == (b"\x00v1", "1")

        client.save_state(STORE, "model", b"v2", etag=first.etag)
        with pytest.raises(DaprGrpcError) as stale:
            client.save_state(STORE, "model", b"v3", etag=first.etag)
        assert stale.value.code() == grpc.StatusCode.ABORTED
        assert client.get_state(STORE, "model").etag == "2"

        # As real Redis (tests/test_real_dapr_state.py): first-write without etag fails only on
        # a key a first-write created, and with INTERNAL, not ABORTED.
        first_write = StateOptions(concurrency=Concurrency.first_write)
        client.save_state(STORE, "labels", b"cat\ndog", options=first_write)
        with pytest.raises(DaprGrpcError) as exists:
            client.save_state(STORE, "labels", b"x", options=first_write)
        assert exists.value.code() == grpc.StatusCode.INTERNAL
        client.save_state(STORE, "model", b"v2", options=first_write)  # made without first-write
        client.save_state(STORE, "model", b"v2", etag="3")

        items = client.get_bulk_state(STORE, ["model", "labels", "absent"]).items
        assert [(item.key, item.data, item.etag) for item in items] == [
            ("model", b"v2", "4"),
            ("labels", b"cat\ndog", "1"),
            ("absent", b"", ""),
        ]

        with pytest.raises(DaprGrpcError) as stale_delete:
            client.delete_state(STORE, "model", etag="1")
        assert stale_delete.value.code() == grpc.StatusCode.ABORTED
        client.delete_state(STORE, "model", etag="4")
    assert sidecar.state(STORE) == {"labels": b"cat\ndog"}


def test_transactions_are_atomic(sidecar: FakeDaprd) -> None:
    sidecar.put_raw(STORE, "a", b"old")
    with DaprClient() as client:
        with pytest.raises(DaprGrpcError) as failed:
            client.execute_state_transaction(
                STORE,
                [
                    TransactionalStateOperation(key="b", data=b"new"),
                    TransactionalStateOperation(key="a", data=b"x", etag="99"),
                ],
            )
        assert failed.value.code() == grpc.StatusCode.ABORTED
        assert sidecar.state(STORE) == {"a": b"old"}

        client.execute_state_transaction(
            STORE,
            [
                TransactionalStateOperation(key="b", data=b"new"),
                TransactionalStateOperation(operation_type=TransactionOperationType.delete, key="a"),
            ],
        )
    assert sidecar.state(STORE) == {"b": b"new"}


def test_key_prefix_and_raw_helpers(client_env: ClientEnv) -> None:
    with FakeDaprd(key_prefix="appid", app_id="image-classifier") as double:
        client_env(double)
        with DaprClient() as client:
            client.save_state(STORE, "model", b"m")
            assert double.state(STORE) == {"image-classifier||model": b"m"}
            double.corrupt(STORE, "model", b"garbage")
            corrupted = client.get_state(STORE, "model")
            assert (corrupted.data, corrupted.etag) == (b"garbage", "1")  # same etag: undetectable
            double.put_raw(STORE, "model", b"replaced")
            assert client.get_state(STORE, "model").etag == "2"
            double.delete_raw(STORE, "model")
            assert client.get_state(STORE, "model").data == b""
            with pytest.raises(DaprGrpcError) as illegal:
                client.save_state(STORE, "a||b", b"x")
            assert illegal.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(DaprGrpcError) as illegal_in_bulk:  # the whole request, as daprd
                client.get_bulk_state(STORE, ["model", "a||b"])
            assert illegal_in_bulk.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_publish_is_recorded(sidecar: FakeDaprd) -> None:
    with DaprClient() as client:
        client.publish_event(
            "pubsub",
            "results",
            b'{"label": "cat"}',
            data_content_type="application/json",
            publish_metadata={"ttlInSeconds": "60"},
        )
    [published] = sidecar.wait_for_published("results", 1, timeout=2)
    assert (published.pubsub, published.data, published.content_type) == (
        "pubsub",
        b'{"label": "cat"}',
        "application/json",
    )
    assert published.metadata == {"ttlInSeconds": "60"}
    assert published.event_id
    with pytest.raises(TimeoutError):
        sidecar.wait_for_published("results", 2, timeout=0.1)


def test_fault_injection_and_unavailable(sidecar: FakeDaprd) -> None:
    with DaprClient() as client:
        sidecar.fail_next("GetState", grpc.StatusCode.INTERNAL, times=2)
        for _ in range(2):
            with pytest.raises(DaprGrpcError) as injected:
                client.get_state(STORE, "k")
            assert injected.value.code() == grpc.StatusCode.INTERNAL
        assert client.get_state(STORE, "k").data == b""
        assert sidecar.calls["GetState"] == 3

        sidecar.unavailable = True
        with pytest.raises(DaprGrpcError) as down:
            client.save_state(STORE, "k", b"v")
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        sidecar.unavailable = False
        client.save_state(STORE, "k", b"v")

        with pytest.raises(grpc.RpcError) as unimplemented:
            client.get_secret("vault", "key")
        assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(ValueError):
        sidecar.fail_next("GetStat", grpc.StatusCode.INTERNAL)


def test_client_recovers_after_restart(sidecar: FakeDaprd) -> None:
    ports = (sidecar.grpc_port, sidecar.http_port)
    with DaprClient() as client:
        client.save_state(STORE, "model", b"kept")
        sidecar.restart(down_s=0.2)
        assert (sidecar.grpc_port, sidecar.http_port) == ports
        assert client.get_state(STORE, "model").data == b"kept"
    with DaprClient() as client:  # construction polls healthz/outbound again
        assert client.get_state(STORE, "model").data == b"kept"


def test_max_body_bytes_limits_the_api(client_env: ClientEnv) -> None:
    with FakeDaprd(max_body_bytes=1 << 20) as double:
        client_env(double)
        with DaprClient() as client:
            with pytest.raises(DaprGrpcError) as too_big:
                client.save_state(STORE, "big", b"x" * (2 << 20))
            assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_api_token_is_enforced(client_env: ClientEnv) -> None:
    with FakeDaprd(dapr_api_token="api-secret") as double:
        client_env(double)
        with DaprClient() as client:  # DAPR_API_TOKEN from env(): accepted
            client.save_state(STORE, "k", b"v")
        channel = grpc.insecure_channel(f"127.0.0.1:{double.grpc_port}")
        with pytest.raises(grpc.RpcError) as rejected:
            dapr_pb2_grpc.DaprStub(channel).GetState(state_pb2.GetStateRequest(store_name=STORE, key="k"))
        assert rejected.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()


# --- driving the real app ---------------------------------------------------------------------------


def test_wait_for_app_reads_subscriptions(daprd: FakeDaprd) -> None:
    [subscription] = daprd.subscriptions
    assert (subscription.pubsub, subscription.topic, subscription.dead_letter_topic) == (
        "pubsub",
        "t",
        "t-dead",
    )
    assert subscription.routes == ()
    assert daprd.health_check() is True
    daprd.wait_healthy(timeout=1)


def test_invoke_echo_with_daprd_metadata(daprd: FakeDaprd, tiny_app: TinyApp) -> None:
    result = daprd.invoke("echo", b"\x89PNG\x00", content_type="application/octet-stream")
    assert (result.code, result.data) == (grpc.StatusCode.OK, b"\x89PNG\x00")
    [request] = tiny_app.invocations
    assert request.metadata["dapr-api-token"] == [APP_TOKEN]
    assert request.metadata["dapr-caller-app-id"] == ["fake-caller"]
    assert request.metadata["traceparent"][0].startswith("00-")

    assert daprd.invoke("echo", b"{}", token=None).code == grpc.StatusCode.OK
    assert "dapr-api-token" not in tiny_app.invocations[-1].metadata

    missing = daprd.invoke("nope", b"{}")
    assert missing.code == grpc.StatusCode.UNIMPLEMENTED
    assert missing.data == b""


def test_invoke_packed_sends_a_protobuf_message(daprd: FakeDaprd, tiny_app: TinyApp) -> None:
    message = struct_pb2.Struct()
    message.update({"image": "ref"})
    result = daprd.invoke_packed("echo", message)
    assert result.code == grpc.StatusCode.OK
    assert result.type_url == "type.googleapis.com/google.protobuf.Struct"
    assert struct_pb2.Struct.FromString(result.data) == message
    assert tiny_app.invocations[0].is_proto()


def test_invoke_respects_max_body_bytes(tiny_app: TinyApp) -> None:
    with FakeDaprd(app_port=tiny_app.port, max_body_bytes=1024) as double:
        assert double.invoke("echo", b"x" * 2048).code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_deliver_success_carries_the_cloudevent(daprd: FakeDaprd, tiny_app: TinyApp) -> None:
    delivery = daprd.deliver("pubsub", "t", b"ok", "application/octet-stream", event_id="e-1")
    assert (delivery.status, delivery.attempts, delivery.dead_lettered) == ("SUCCESS", 1, False)
    [event] = tiny_app.accepted
    assert (event.id(), event.source(), event.type(), event.spec_version()) == (
        "e-1",
        "fake-publisher",
        "com.dapr.event.sent",
        "1.0",
    )
    assert (event.topic(), event.pubsub_name(), event.raw_data()) == ("t", "pubsub", b"ok")
    extensions = event.extensions()
    assert (extensions["topic"], extensions["pubsubname"]) == ("t", "pubsub")
    assert extensions["traceid"].startswith("00-")
    assert daprd.published() == []


def test_deliver_retries_per_policy(daprd: FakeDaprd, tiny_app: TinyApp) -> None:
    flaky = daprd.deliver("pubsub", "t", b"flaky:2", event_id="e-flaky")
    assert (flaky.status, flaky.attempts, flaky.dead_lettered) == ("SUCCESS", 3, False)
    assert tiny_app.attempts["e-flaky"] == 3

    raised = daprd.deliver("pubsub", "t", b"raise", event_id="e-raise")
    assert (raised.status, raised.attempts, raised.dead_lettered) == ("RETRY", 4, True)
    assert "UNKNOWN" in raised.last_error
    [dead] = daprd.published("t-dead")
    assert (dead.data, dead.content_type, dead.event_id) == (b"raise", "application/json", "e-raise")


def test_retry_without_policy_is_not_retried(tiny_app: TinyApp) -> None:
    with FakeDaprd(app_port=tiny_app.port, resiliency=None) as double:
        double.wait_for_app()
        delivery = double.deliver("pubsub", "t", b"retry", event_id="e-once")
        assert (delivery.status, delivery.attempts, delivery.dead_lettered) == ("RETRY", 1, True)
        assert tiny_app.attempts["e-once"] == 1


def test_drop_goes_to_the_dead_letter_topic(daprd: FakeDaprd, tiny_app: TinyApp) -> None:
    delivery = daprd.deliver("pubsub", "t", b"drop", "text/plain", event_id="e-drop")
    assert (delivery.status, delivery.attempts, delivery.dead_lettered) == ("DROP", 1, True)
    [dead] = daprd.published("t-dead")
    assert (dead.pubsub, dead.data, dead.content_type) == ("pubsub", b"drop", "text/plain")


def test_unhandled_route_and_unknown_topic_drop(daprd: FakeDaprd, tiny_app: TinyApp) -> None:
    # A declarative subscription whose route the app has no handler for: UNIMPLEMENTED, dropped.
    daprd.add_subscription("pubsub", "orphans", route="/nowhere")
    orphan = daprd.deliver("pubsub", "orphans", b"ok")
    assert (orphan.status, orphan.attempts, orphan.dead_lettered) == ("DROP", 1, False)
    assert "UNIMPLEMENTED" in orphan.last_error

    unsubscribed = daprd.deliver("pubsub", "elsewhere", b"ok")
    assert (unsubscribed.status, unsubscribed.attempts) == ("DROP", 0)
    assert tiny_app.accepted == []


def test_app_token_missing_on_subscriptions_and_health(tiny_app: TinyApp) -> None:
    """The app must accept token-less ListTopicSubscriptions and HealthCheck, like daprd sends them."""
    with FakeDaprd(app_port=tiny_app.port, app_api_token=APP_TOKEN) as double:
        assert [s.topic for s in double.wait_for_app()] == ["t"]
        assert double.health_check() is True


def test_health_check_false_when_the_app_is_gone(tiny_app: TinyApp) -> None:
    with FakeDaprd(app_port=tiny_app.port) as double:
        assert double.health_check() is True
        grpc_server(tiny_app.app).stop(0).wait(2)
        assert double.health_check() is False


def test_published_events_reach_the_subscribed_app(
    daprd: FakeDaprd, tiny_app: TinyApp, client_env: ClientEnv
) -> None:
    client_env(daprd)
    with DaprClient() as client:
        client.publish_event("pubsub", "t", b"ok", data_content_type="application/octet-stream")
        client.publish_event(
            "pubsub", "t", json.dumps({"b": 1, "a": "<x>"}), data_content_type="application/json"
        )
        client.publish_event("pubsub", "t", b"\x89PNG", data_content_type="image/png")
    deliveries = daprd.wait_for_delivered("t", 3, timeout=5)
    assert {delivery.status for _, delivery in deliveries} == {"SUCCESS"}
    received = {event.data_content_type(): event for event in tiny_app.accepted}
    assert received["application/octet-stream"].raw_data() == b"ok"
    assert received["application/octet-stream"].source() == "image-classifier"
    # daprd re-encodes JSON data (Go encoding) and leaves other non-text types empty.
    assert received["application/json"].raw_data() == b'{"a":"\\u003cx\\u003e","b":1}'
    assert received["image/png"].raw_data() == b""
    event_ids = {published.event_id for published, _ in deliveries}
    assert {event.id() for event in tiny_app.accepted} == event_ids


def test_published_drop_is_dead_lettered_via_the_broker(
    daprd: FakeDaprd, tiny_app: TinyApp, client_env: ClientEnv
) -> None:
    client_env(daprd)
    with DaprClient() as client:
        client.publish_event("pubsub", "t", b"drop", data_content_type="application/octet-stream")
    [(published, delivery)] = daprd.wait_for_delivered("t", 1, timeout=5)
    assert (delivery.status, delivery.dead_lettered) == ("DROP", True)
    [dead] = daprd.published("t-dead")
    assert (dead.data, dead.event_id) == (b"drop", published.event_id)


def test_restart_rereads_subscriptions_and_keeps_state(daprd: FakeDaprd) -> None:
    daprd.put_raw(STORE, "model", b"m")
    daprd.restart(down_s=0.1)
    assert [s.topic for s in daprd.subscriptions] == ["t"]
    assert daprd.state(STORE) == {"model": b"m"}
    assert daprd.deliver("pubsub", "t", b"ok").status == "SUCCESS"


def test_resiliency_interval_is_honoured(tiny_app: TinyApp) -> None:
    with FakeDaprd(app_port=tiny_app.port, resiliency=RetryPolicy(max_retries=1, interval_s=0.2)) as double:
        double.wait_for_app()
        started = time.monotonic()
        delivery = double.deliver("pubsub", "t", b"retry")
        assert (delivery.status, delivery.attempts) == ("RETRY", 2)
        assert time.monotonic() - started >= 0.2


def test_undecodable_events_never_reach_the_app_and_are_dead_lettered(
    daprd: FakeDaprd, tiny_app: TinyApp, client_env: ClientEnv
) -> None:
    """As real daprd (tests/test_real_dapr_pubsub.py): a rawPayload publish to a subscription without
    rawPayload is dead-lettered as it was published; a CloudEvent whose data_base64 is not base64 is
    retried per policy, then dead-lettered; the app sees neither."""
    client_env(daprd)
    bad_base64 = json.dumps(
        {"specversion": "1.0", "id": "e-b64", "source": "s", "type": "t", "data_base64": "%%%"}
    )
    with DaprClient() as client:
        client.publish_event(
            "pubsub",
            "t",
            b"\xff\xd8raw",
            data_content_type="application/octet-stream",
            publish_metadata={"rawPayload": "true"},
        )
        client.publish_event("pubsub", "t", bad_base64, data_content_type="application/cloudevents+json")
    deliveries = {published.data: delivery for published, delivery in daprd.wait_for_delivered("t", 2)}
    raw, b64 = deliveries[b"\xff\xd8raw"], deliveries[bad_base64.encode()]
    assert (raw.status, raw.attempts, raw.dead_lettered) == ("RETRY", 0, True)
    assert (b64.status, b64.attempts, b64.dead_lettered) == ("RETRY", 4, True)
    assert {dead.data for dead in daprd.published("t-dead")} == {b"\xff\xd8raw", bad_base64.encode()}
    assert tiny_app.attempts == Counter()


def test_unimplemented_is_dropped_but_not_dead_lettered(tiny_app: TinyApp) -> None:
    """daprd acks an UNIMPLEMENTED answer without the dead-letter topic (postman/grpc/grpc.go:102-108)."""
    with FakeDaprd(app_port=tiny_app.port) as double:
        double.add_subscription("pubsub", "orphans", route="/nowhere", dead_letter_topic="orphans-dead")
        delivery = double.deliver("pubsub", "orphans", b"ok")
        assert (delivery.status, delivery.dead_lettered) == ("DROP", False)
        assert double.published("orphans-dead") == []
