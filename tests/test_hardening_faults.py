"""Store and sidecar faults, against `classifier serve` beside the daprd double.

(A damaged new model version - a missing chunk or a digest mismatch - is covered in
test_dapr_app.py::test_damaged_new_version_is_not_activated, which records here too.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import IMAGES, MODELS
from daprd import FakeDaprd
from hardening import HardeningLog
from service_process import ServiceProcess, new_daprd, results_for, upload

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
BIRD_INDEX = 166
BIRDS_LABELS = (MODELS / "aiy_birds_v1" / "labels.txt").read_text().splitlines()
WAIT_S = 30  # generous bound for the service to recover (it polls the store every 0.5 s)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    daprd = new_daprd()
    upload(daprd, tmp_path, "birds", "aiy_birds_v1")
    process = ServiceProcess(daprd, tmp_path, CLASSIFIER_WORKERS="2")
    try:
        process.wait_ready()
        yield process
        assert process.terminate() == 0
    finally:
        process.kill()
        daprd.close()


def classify(daprd: FakeDaprd) -> dict:
    result = daprd.invoke("classify", BIRD, content_type="application/octet-stream")
    assert result.code == grpc.StatusCode.OK, result.details
    return json.loads(result.data)


def eventually(check, what: str) -> int:
    """Retry `check` until it is true; the number of tries it took."""
    deadline = time.monotonic() + WAIT_S
    tries = 0
    while True:
        tries += 1
        if check():
            return tries
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.1)


def test_sidecar_restart_mid_run(service: ServiceProcess, hardening: HardeningLog) -> None:
    daprd = service.daprd
    pid = service.process.pid
    stop = threading.Event()
    invoke_failures: set[str] = set()

    def keep_invoking() -> None:
        while not stop.is_set():
            result = daprd.invoke("classify", BIRD, content_type="application/octet-stream")
            if result.code != grpc.StatusCode.OK:
                invoke_failures.add(result.code.name)

    assert (
        daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id="before").status
        == "SUCCESS"
    )
    invoker = threading.Thread(target=keep_invoking)
    invoker.start()
    try:
        daprd.restart(down_s=1.0)  # down for 1 s; the app's polls and its client's channel see it
    finally:
        stop.set()
        invoker.join()
    deliveries = []

    def event_goes_through() -> bool:
        event_id = f"after-{len(deliveries)}"
        delivery = daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id=event_id)
        deliveries.append((event_id, delivery))
        # Until the app's client has reconnected, it cannot publish the result: it answers RETRY.
        assert delivery.status in ("SUCCESS", "RETRY"), delivery
        return delivery.status == "SUCCESS"

    eventually(event_goes_through, "an event after the restart succeeds")
    assert results_for(daprd, deliveries[-1][0])["predictions"][0]["index"] == BIRD_INDEX
    assert classify(daprd)["predictions"][0]["index"] == BIRD_INDEX
    models = json.loads(daprd.invoke("models", b"").data)["models"]
    assert service.process.pid == pid and service.process.poll() is None  # no restart of the service
    # Only a call in flight when the sidecar went down may have failed (the sidecar closed its
    # channel to the app); every call after the restart succeeds.
    assert invoke_failures <= {"CANCELLED", "UNAVAILABLE"}, invoke_failures
    assert all(classify(daprd)["predictions"][0]["index"] == BIRD_INDEX for _ in range(5))
    healthy = daprd.health_check()
    hardening.record(
        "store faults",
        "sidecar restart",
        "the daprd double stops for 1 s and restarts on the same ports while invocations keep coming",
        "OK",
        "invocations succeed at once (one in flight may be cut: CANCELLED); events get RETRY until the "
        "app's client reconnects, then SUCCESS, results published; same process",
        healthy and models[0]["ready"],
    )
    hardening.measure("sidecar restart: events answered RETRY before the first SUCCESS", len(deliveries) - 1)
    assert healthy


def shadow_upload(daprd: FakeDaprd, tmp: Path, name: str, model: str, labels: list[str]) -> int:
    """Upload a new version into a scratch sidecar and copy its keys into `daprd` behind the
    app's back (the API is down): what another writer's upload leaves in the store."""
    scratch = new_daprd()
    try:
        current = daprd.state("statestore")
        prefix = daprd.stored_key("statestore", "")
        for key, value in current.items():
            scratch.put_raw("statestore", key.removeprefix(prefix), value)
        version = upload(scratch, tmp, name, model, labels)
        for key, value in scratch.state("statestore").items():
            daprd.put_raw("statestore", key.removeprefix(prefix), value)
        return version
    finally:
        scratch.close()


@pytest.mark.parametrize("fault", ["sidecar unavailable", "chunk fetch fails"])
def test_store_fault_while_a_new_version_is_published(
    service: ServiceProcess, tmp_path: Path, hardening: HardeningLog, fault: str
) -> None:
    daprd = service.daprd
    active = classify(daprd)["version"]
    shouted = [label.upper() for label in BIRDS_LABELS]
    if fault == "sidecar unavailable":
        daprd.unavailable = True  # every Dapr API call fails with UNAVAILABLE
        new_version = shadow_upload(daprd, tmp_path, "birds", "aiy_birds_v1", shouted)
    else:
        daprd.fail_next("GetBulkState", grpc.StatusCode.UNAVAILABLE, times=10_000)
        new_version = upload(daprd, tmp_path, "birds", "aiy_birds_v1", shouted)
    assert new_version == active + 1

    update = json.dumps({"kind": "model", "name": "birds", "version": new_version}).encode()
    delivery = daprd.deliver("updates", "model-updates", update, "application/json")
    assert delivery.status == "RETRY"  # cannot be fetched now: daprd is to redeliver it later
    time.sleep(1.5)  # three of the service's polls, all failing
    during = classify(daprd)
    assert during["version"] == active and during["predictions"][0]["label"] == "Aix galericulata"
    status = {m["name"]: m for m in json.loads(daprd.invoke("models", b"").data)["models"]}["birds"]
    assert status["version"] == active and status["failed_version"] is None  # transient: not a failure
    log = service.log()
    assert "update of model birds" in log and "polling the store" in log  # both faults were logged

    daprd.unavailable = False
    daprd.clear_faults()
    eventually(lambda: classify(daprd)["version"] == new_version, "the new version is picked up")
    after = classify(daprd)
    assert after["predictions"][0]["label"] == "AIX GALERICULATA"
    healthy = daprd.health_check()
    hardening.record(
        "store faults",
        f"{fault} during an update",
        "a new model version is uploaded while "
        + (
            "every Dapr API call fails (UNAVAILABLE)"
            if fault == "sidecar unavailable"
            else "every GetBulkState (chunk fetch) fails (UNAVAILABLE)"
        ),
        "old version serves",
        f"update event answered RETRY; requests kept getting version {active}, not reported failed; "
        f"version {new_version} active once the store was back (next poll)",
        healthy,
    )
    assert healthy
