"""The Dapr contract, end to end: `classifier serve` as a process, driven over real gRPC
sockets by the daprd double exactly as daprd drives an app, with models in the double's
state store."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import IMAGES, MODELS
from dapr.clients import DaprClient
from daprd import FakeDaprd
from hardening import HardeningLog
from service_process import ROOT, ServiceProcess, error_of, new_daprd, results_for, sidecar_env, upload

from service.edge.classifier_pb2 import ClassifyRequest, ClassifyResponse
from service.stores.dapr import CHUNK_BYTES, DaprStore

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
BURGER = (IMAGES / "classify" / "burger.jpg").read_bytes()
BIRDS_LABELS = (MODELS / "aiy_birds_v1" / "labels.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dapr-app")


@pytest.fixture(scope="module")
def daprd(workdir: Path) -> Iterator[FakeDaprd]:
    sidecar = new_daprd()
    upload(sidecar, workdir, "birds", "aiy_birds_v1")
    upload(sidecar, workdir, "mobilenet", "mobilenet_v2_1.0_224_quant")
    yield sidecar
    sidecar.close()


@pytest.fixture(scope="module")
def service(daprd: FakeDaprd, workdir: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(daprd, workdir, CLASSIFIER_DEFAULT_MODEL="birds", CLASSIFIER_MAX_MESSAGE_MB="4")
    process.wait_ready()
    yield process
    assert process.terminate() == 0


# -- service invocation ------------------------------------------------------------------


def test_subscriptions_declared_at_start(service: ServiceProcess, daprd: FakeDaprd) -> None:
    topics = {(s.pubsub, s.topic): s for s in daprd.subscriptions}
    assert topics[("pubsub", "images")].dead_letter_topic == "images-deadletter"
    assert ("updates", "model-updates") in topics


def test_invoke_raw_bytes_as_dapr_invoke_sends_them(service: ServiceProcess, daprd: FakeDaprd) -> None:
    result = daprd.invoke("classify", BIRD, content_type="application/json")  # `dapr invoke --data-file`
    assert result.code == grpc.StatusCode.OK, result.details
    response = json.loads(result.data)
    assert result.content_type == "application/json"
    assert response["model"] == "birds" and response["version"] >= 1
    assert response["predictions"][0]["index"] == 166
    assert response["predictions"][0]["label"] == "Aix galericulata"


def test_invoke_json_body(service: ServiceProcess, daprd: FakeDaprd) -> None:
    body = {"image_base64": base64.b64encode(BURGER).decode(), "model": "mobilenet", "top_k": 2}
    result = daprd.invoke("classify", json.dumps(body).encode())
    assert result.code == grpc.StatusCode.OK, result.details
    response = json.loads(result.data)
    assert response["model"] == "mobilenet"
    assert [p["label"] for p in response["predictions"]][:1] == ["cheeseburger"]
    assert len(response["predictions"]) == 2


def test_invoke_protobuf_body_and_packed_message(service: ServiceProcess, daprd: FakeDaprd) -> None:
    request = ClassifyRequest(image=BIRD, model="birds", top_k=3)
    result = daprd.invoke("classify", request.SerializeToString(), content_type="application/x-protobuf")
    assert result.code == grpc.StatusCode.OK, result.details
    assert result.content_type == "application/x-protobuf"
    response = ClassifyResponse.FromString(result.data)
    assert response.predictions[0].index == 166 and len(response.predictions) == 3

    packed = daprd.invoke_packed("classify", request)
    assert packed.code == grpc.StatusCode.OK, packed.details
    assert packed.type_url.endswith("classifier.v1.ClassifyResponse")
    assert ClassifyResponse.FromString(packed.data).predictions[0].label == "Aix galericulata"


@pytest.mark.parametrize(
    ("body", "content_type", "code", "error_code"),
    [
        (b"", "application/octet-stream", grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument"),
        (os.urandom(3000), "application/octet-stream", grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument"),
        (b'{"image_base64": ', "application/json", grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument"),
        (
            b'{"image_base64": "@@@"}',
            "application/json",
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_argument",
        ),
        (
            b'{"image_url": "http://example.com/a.jpg"}',
            "application/json",
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_argument",
        ),
        (b"\xff\x00garbage", "application/x-protobuf", grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument"),
        (
            json.dumps({"image_base64": base64.b64encode(BIRD).decode(), "model": "nope"}).encode(),
            "application/json",
            grpc.StatusCode.NOT_FOUND,
            "not_found",
        ),
        (
            json.dumps({"image_base64": base64.b64encode(BIRD).decode(), "top_k": -1}).encode(),
            "application/json",
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_argument",
        ),
    ],
    ids=[
        "empty",
        "random",
        "bad-json",
        "bad-base64",
        "image_url",
        "bad-protobuf",
        "unknown-model",
        "top_k<0",
    ],
)
def test_bad_requests_get_a_status_and_json_error(
    service: ServiceProcess,
    daprd: FakeDaprd,
    body: bytes,
    content_type: str,
    code: grpc.StatusCode,
    error_code: str,
) -> None:
    result = daprd.invoke("classify", body, content_type=content_type)
    assert result.code == code
    assert error_of(result)["code"] == error_code and error_of(result)["message"]
    assert daprd.invoke("classify", BIRD).code == grpc.StatusCode.OK  # and it keeps serving


def test_oversize_body_is_refused_clearly(service: ServiceProcess, daprd: FakeDaprd) -> None:
    oversize = b"\xff\xd8" + b"\x00" * (5 << 20)  # over the app's 4 MiB
    result = daprd.invoke("classify", oversize)
    assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    limit = f"over the limit of {4 << 20} (CLASSIFIER_MAX_MESSAGE_MB=4)"
    assert error_of(result) == {
        "code": "resource_exhausted",
        "message": f"the body is {len(oversize)} bytes, {limit}",
    }
    packed = daprd.invoke_packed("classify", ClassifyRequest(image=oversize))
    assert packed.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "over the limit" in packed.details
    # Far over it, gRPC itself refuses the message before any handler runs.
    far_over = daprd.invoke("classify", b"\x00" * (9 << 20))
    assert far_over.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in far_over.details

    event = daprd.deliver("pubsub", "images", oversize, "application/octet-stream", event_id="too-big")
    assert event.status == "DROP" and event.dead_lettered
    [result_event] = [
        e for e in daprd.published("classifications") if json.loads(e.data)["correlation_id"] == "too-big"
    ]
    assert json.loads(result_event.data)["error"]["code"] == "resource_exhausted"
    assert daprd.invoke("classify", BIRD).code == grpc.StatusCode.OK


def test_unknown_method_is_unimplemented(service: ServiceProcess, daprd: FakeDaprd) -> None:
    assert daprd.invoke("detect", BIRD).code == grpc.StatusCode.UNIMPLEMENTED


def test_models_method_lists_versions(service: ServiceProcess, daprd: FakeDaprd) -> None:
    result = daprd.invoke("models", b"")
    assert result.code == grpc.StatusCode.OK
    body = json.loads(result.data)
    models = {m["name"]: m for m in body["models"]}
    assert models["birds"]["ready"] and models["mobilenet"]["ready"]
    assert body["default_model"] == "birds"


# -- pub/sub --------------------------------------------------------------------------------


def test_image_event_is_classified_and_published(service: ServiceProcess, daprd: FakeDaprd) -> None:
    delivery = daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id="frame-1")
    assert delivery.status == "SUCCESS" and delivery.attempts == 1, delivery.last_error
    result = results_for(daprd, "frame-1")
    assert result["predictions"][0]["index"] == 166 and result["model"] == "birds"


def test_json_image_event(service: ServiceProcess, daprd: FakeDaprd) -> None:
    body = json.dumps({"image_base64": base64.b64encode(BURGER).decode(), "model": "mobilenet"}).encode()
    delivery = daprd.deliver("pubsub", "images", body, "application/json", event_id="frame-json")
    assert delivery.status == "SUCCESS", delivery.last_error
    assert results_for(daprd, "frame-json")["predictions"][0]["label"] == "cheeseburger"


def test_poison_event_is_dropped_to_the_dead_letter_topic(service: ServiceProcess, daprd: FakeDaprd) -> None:
    poison = b"this is not an image"
    delivery = daprd.deliver("pubsub", "images", poison, "application/octet-stream", event_id="poison-1")
    assert delivery.status == "DROP" and delivery.dead_lettered and delivery.attempts == 1
    assert any(p.data == poison for p in daprd.published("images-deadletter"))
    assert results_for(daprd, "poison-1")["error"]["code"] == "invalid_argument"


def test_transient_fault_is_retried_then_succeeds(service: ServiceProcess, daprd: FakeDaprd) -> None:
    daprd.fail_next("PublishEvent", grpc.StatusCode.UNAVAILABLE, times=2)  # results cannot go out
    delivery = daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id="frame-retry")
    assert delivery.status == "SUCCESS" and delivery.attempts == 3, delivery.last_error
    assert results_for(daprd, "frame-retry")["predictions"][0]["index"] == 166


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        ("image/jpeg", "daprd delivers no data for content type 'image/jpeg'"),
        ("text/plain", "replacing the image's non-UTF-8 bytes with U+FFFD"),
        ("application/json", "the event's data is a JSON string, not an object"),  # dapr publish --data-file
    ],
)
def test_image_bytes_daprd_empties_or_corrupts_are_dropped_clearly(
    service: ServiceProcess, daprd: FakeDaprd, content_type: str, words: str
) -> None:
    """Published through the sidecar (the double's envelope rules, as real daprd's: see
    tests/test_real_dapr_pubsub.py), never classified as garbage."""
    event_id = f"mangled-{content_type}"
    with sidecar_env(daprd), DaprClient() as client:
        metadata = {"cloudevent.id": event_id}
        client.publish_event(
            "pubsub", "images", BIRD, data_content_type=content_type, publish_metadata=metadata
        )
    error = results_for(daprd, event_id)["error"]
    assert error["code"] == "invalid_argument" and words in error["message"], error
    deadline = time.monotonic() + 10
    while not any(p.event_id == event_id for p in daprd.published("images-deadletter")):
        assert time.monotonic() < deadline, "not dead-lettered"
        time.sleep(0.02)


# -- models in the state store ----------------------------------------------------------


def app_state(daprd: FakeDaprd) -> dict[str, bytes]:
    """The state store by the app's keys (daprd prefixes them with the store's name)."""
    prefix = daprd.stored_key("statestore", "")
    return {k.removeprefix(prefix): v for k, v in daprd.state("statestore").items()}


def test_model_is_stored_as_manifest_and_small_chunks(service: ServiceProcess, daprd: FakeDaprd) -> None:
    state = app_state(daprd)
    manifest = json.loads(state["model/birds"])
    assert manifest["chunks"] == -(-manifest["size"] // CHUNK_BYTES) and manifest["chunks"] > 1
    assert len(manifest["labels"]) == 965 and manifest["inputs"][0]["shape"] == [1, 224, 224, 3]
    chunks = [k for k in state if k.startswith(f"model/birds/{manifest['chunk_prefix']}/")]
    assert len(chunks) == manifest["chunks"] and all(len(state[k]) <= CHUNK_BYTES for k in chunks)
    # keyPrefix `name`: the raw keys carry the store's name, whatever the app id
    assert "statestore||model/birds" in daprd.state("statestore")


def test_new_version_is_picked_up_without_restart(
    service: ServiceProcess, daprd: FakeDaprd, workdir: Path
) -> None:
    before = json.loads(daprd.invoke("classify", BIRD).data)
    shouted = [label.upper() for label in BIRDS_LABELS]
    version = upload(daprd, workdir, "birds", "aiy_birds_v1", labels=shouted)
    assert version == before["version"] + 1
    update = json.dumps({"kind": "model", "name": "birds", "version": version}).encode()
    assert daprd.deliver("updates", "model-updates", update, "application/json").status == "SUCCESS"
    after = json.loads(daprd.invoke("classify", BIRD).data)  # the event was handled: no waiting
    assert after["version"] == version
    assert after["predictions"][0]["label"] == "AIX GALERICULATA"


def model_status(daprd: FakeDaprd, name: str) -> dict:
    return {m["name"]: m for m in json.loads(daprd.invoke("models", b"").data)["models"]}[name]


def wait_for_failure(daprd: FakeDaprd, name: str, version: int) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the watcher polls every 0.5 s
        status = model_status(daprd, name)
        if status["failed_version"] == version:
            return status
        time.sleep(0.1)
    raise AssertionError(f"version {version} of {name} was not reported as failed: {status}")


@pytest.mark.parametrize("fault", ["missing chunk", "digest mismatch"])
def test_damaged_new_version_is_not_activated(
    service: ServiceProcess, daprd: FakeDaprd, fault: str, hardening: HardeningLog
) -> None:
    original = app_state(daprd)["model/mobilenet"]
    manifest = json.loads(original)
    active = model_status(daprd, "mobilenet")["version"]
    # distinct versions, so one case's failure report is not taken for the other's
    broken_version = active + (1 if fault == "missing chunk" else 2)
    broken = {**manifest, "version": broken_version}
    if fault == "missing chunk":
        broken["sha256"] = "ab" * 32  # not cached on disk: it must be fetched, and
        broken["chunk_prefix"] = "ab" * 8 + "-nothing-here"  # no chunks are under this prefix
    else:
        broken["sha256"] = manifest["sha256"][:16] + "0" * 48  # the chunks exist, their digest differs
    daprd.put_raw("statestore", "model/mobilenet", json.dumps(broken).encode())
    try:
        status = wait_for_failure(daprd, "mobilenet", broken_version)
        assert ("missing" if fault == "missing chunk" else "sha256") in status["error"]
        assert status["version"] == active  # the previous version keeps serving
        body = json.dumps({"image_base64": base64.b64encode(BURGER).decode(), "model": "mobilenet"}).encode()
        response = json.loads(daprd.invoke("classify", body).data)
        assert response["version"] == active and response["predictions"][0]["label"] == "cheeseburger"
        assert "not activated" in service.log()
        hardening.record(
            "store faults",
            fault,
            f"a new manifest whose {'chunks do not exist' if fault == 'missing chunk' else 'sha256 differs'}",
            "old version serves",
            f"`models` shows failed_version {broken_version}: {status['error']}; logged as not activated",
            daprd.health_check(),
        )
    finally:
        daprd.put_raw("statestore", "model/mobilenet", original)


# -- lifecycle and auth -------------------------------------------------------------------


def wait_logged(service: ServiceProcess, text: str, timeout: float = 30.0) -> None:
    """Wait until the service's log has `text`: the state a test then checks has been reached."""
    deadline = time.monotonic() + timeout
    while text not in service.log():
        assert service.process.poll() is None, f"the service exited:\n{service.log()[-3000:]}"
        assert time.monotonic() < deadline, f"not logged within {timeout} s: {text}\n{service.log()[-3000:]}"
        time.sleep(0.05)


def test_waits_for_a_late_sidecar_then_becomes_healthy(tmp_path: Path) -> None:
    daprd = new_daprd()
    upload(daprd, tmp_path, "birds", "aiy_birds_v1")
    daprd.stop()  # the sidecar is down when the app starts
    service = ServiceProcess(daprd, tmp_path, DAPR_HEALTH_TIMEOUT="1")  # the SDK's wait gives up after 1 s
    try:
        # the SDK's health wait timed out, and the app goes on waiting rather than exiting
        wait_logged(service, "waiting for the Dapr sidecar")
        assert service.process.poll() is None
        daprd.start()
        service.wait_ready()
        assert daprd.invoke("classify", BIRD).code == grpc.StatusCode.OK
    finally:
        assert service.terminate() == 0
        daprd.close()


def test_app_token_is_enforced_except_where_daprd_sends_none(tmp_path: Path) -> None:
    daprd = new_daprd(app_api_token="s3cret")
    upload(daprd, tmp_path, "birds", "aiy_birds_v1")
    service = ServiceProcess(daprd, tmp_path)
    try:
        service.wait_ready()  # ListTopicSubscriptions and HealthCheck carry no token
        assert daprd.invoke("classify", BIRD).code == grpc.StatusCode.OK  # the double sends the token
        refused = daprd.invoke("classify", BIRD, token=None)
        assert refused.code == grpc.StatusCode.UNAUTHENTICATED
        assert daprd.invoke("classify", BIRD, token="wrong").code == grpc.StatusCode.UNAUTHENTICATED
        delivery = daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id="t1")
        assert delivery.status == "SUCCESS", delivery.last_error
    finally:
        assert service.terminate() == 0
        daprd.close()


def test_sigterm_finishes_calls_in_flight_then_exits_0(tmp_path: Path) -> None:
    daprd = new_daprd()
    upload(daprd, tmp_path, "birds", "aiy_birds_v1")
    service = ServiceProcess(daprd, tmp_path, CLASSIFIER_WORKERS="1")
    try:
        service.wait_ready()
        finished: list[tuple[float, grpc.StatusCode, bytes]] = []
        first_done = threading.Event()

        def call() -> None:
            result = daprd.invoke("classify", BIRD)
            finished.append((time.monotonic(), result.code, result.data))
            first_done.set()

        # One worker, eight calls: while the first is answered, seven wait in the app.
        callers = [threading.Thread(target=call) for _ in range(8)]
        for caller in callers:
            caller.start()
        assert first_done.wait(30)
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        for caller in callers:
            caller.join(30)
        assert [code for _, code, _ in finished] == [grpc.StatusCode.OK] * 8
        assert all(json.loads(data)["predictions"][0]["index"] == 166 for _, _, data in finished)
        assert any(at > signalled for at, _, _ in finished)  # some were still running at SIGTERM
        assert service.process.wait(30) == 0
        assert daprd.invoke("classify", BIRD).code == grpc.StatusCode.UNAVAILABLE  # no new calls
    finally:
        service.terminate()
        daprd.close()


def test_stored_guest_is_swapped_without_restart(tmp_path: Path, test_guests: dict[str, Path]) -> None:
    daprd = new_daprd()
    upload(daprd, tmp_path, "birds", "aiy_birds_v1")
    default_guest = (ROOT / "wasm" / "bin" / "classify.wasm").read_bytes()
    with sidecar_env(daprd), DaprClient() as client:
        store = DaprStore(client, tmp_path / "uploader-cache")
        store.put_guest("logic", default_guest)
        service = ServiceProcess(daprd, tmp_path, CLASSIFIER_GUEST="logic")
        try:
            service.wait_ready()
            assert json.loads(daprd.invoke("classify", BIRD).data)["predictions"][0]["index"] == 166
            guest_info = json.loads(daprd.invoke("models", b"").data)["guest"]
            assert (
                guest_info["name"] == "logic"
                and guest_info["sha256"] == hashlib.sha256(default_guest).hexdigest()
            )

            version = store.put_guest("logic", test_guests["plain_text"].read_bytes()).version
            update = json.dumps({"kind": "guest", "name": "logic", "version": version}).encode()
            assert daprd.deliver("updates", "model-updates", update, "application/json").status == "SUCCESS"
            response = json.loads(daprd.invoke("classify", BIRD).data)
            assert response["output"] == f"plain text from a guest: --model, {len(BIRD)} bytes"
            assert response["model"] == "birds"

            # A damaged next version is not activated: the last good one keeps serving.
            manifest = json.loads(app_state(daprd)["guest/logic"])
            damaged = {**manifest, "version": version + 1, "sha256": "cd" * 32}
            daprd.put_raw("statestore", "guest/logic", json.dumps(damaged).encode())
            deadline = time.monotonic() + 10
            while not json.loads(daprd.invoke("models", b"").data)["guest"]["error"]:
                assert time.monotonic() < deadline, "the damaged guest version was not reported"
                time.sleep(0.1)
            assert json.loads(daprd.invoke("classify", BIRD).data)["output"].startswith("plain text")
        finally:
            assert service.terminate() == 0
            daprd.close()


def test_store_unavailable_while_classifying_an_event_is_retried_not_dropped(tmp_path: Path) -> None:
    """A store outage is no verdict on the event: the model it names may exist. RETRY keeps the event
    (daprd redelivers it); a DROP would send a good event to the dead-letter topic unnoticed."""
    daprd = new_daprd()
    upload(daprd, tmp_path, "birds", "aiy_birds_v1")
    service = ServiceProcess(daprd, tmp_path, CLASSIFIER_POLL_S="3600")  # no poll takes the injected faults
    try:
        service.wait_ready()
        body = json.dumps({"image_base64": base64.b64encode(BIRD).decode(), "model": "not-loaded"}).encode()
        daprd.fail_next("GetState", grpc.StatusCode.UNAVAILABLE, times=2)  # its manifest cannot be read
        delivery = daprd.deliver("pubsub", "images", body, "application/json", event_id="outage")
        # Two RETRYs while the store is down; the third attempt reads the store: no such model, a real DROP.
        assert (delivery.status, delivery.attempts, delivery.dead_lettered) == ("DROP", 3, True), delivery
        assert [r["error"]["code"] for r in daprd_results(daprd, "outage")] == ["not_found"]  # one answer
        assert json.loads(daprd.invoke("classify", BIRD).data)["predictions"][0]["index"] == 166
    finally:
        assert service.terminate() == 0
        daprd.close()


def daprd_results(daprd: FakeDaprd, event_id: str) -> list[dict]:
    """Every result published for `event_id` (results_for gives the first)."""
    return [
        result
        for result in (json.loads(p.data) for p in daprd.published("classifications"))
        if result.get("correlation_id") == event_id
    ]


def test_empty_store_is_not_healthy_until_a_model_is_uploaded(tmp_path: Path) -> None:
    daprd = new_daprd()
    service = ServiceProcess(daprd, tmp_path)
    try:
        daprd.wait_for_app(30)
        wait_logged(service, "waiting for a model")  # start-up has looked at the store and found none
        assert not daprd.health_check()  # daprd holds events back rather than have them dropped
        unavailable = daprd.invoke("classify", BIRD)
        assert unavailable.code == grpc.StatusCode.UNAVAILABLE
        assert "classifier models put" in error_of(unavailable)["message"]
        event = daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id="early")
        assert event.status == "RETRY"  # not DROP: the event is kept for redelivery

        upload(daprd, tmp_path, "birds", "aiy_birds_v1")
        service.wait_ready()
        assert json.loads(daprd.invoke("classify", BIRD).data)["predictions"][0]["index"] == 166
    finally:
        assert service.terminate() == 0
        daprd.close()
