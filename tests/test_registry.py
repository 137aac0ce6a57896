"""The model registry and the store watcher: versions activated, refused, not retried, and
the store's faults as the service sees them (the local store, and the daprd double's)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from conftest import MODELS, ROOT
from dapr.clients import DaprClient
from service_process import new_daprd, sidecar_env

from service.config import Settings
from service.errors import ClassifierError, ErrorKind
from service.pipeline import Classifier
from service.registry import ModelRegistry
from service.stores.dapr import DaprStore
from service.stores.local import LocalStore
from service.watcher import Watcher

BIRDS = (MODELS / "aiy_birds_v1" / "model.tflite").read_bytes()
MOBILENET = (MODELS / "mobilenet_v2_1.0_224_quant" / "model.tflite").read_bytes()
CLASSIFY = (ROOT / "wasm" / "bin" / "classify.wasm").read_bytes()
DESCRIBE = (ROOT / "wasm" / "bin" / "describe.wasm").read_bytes()


def test_a_model_the_store_never_had_is_not_refreshed(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    assert registry.refresh("nosuch") is False
    assert registry.statuses() == [] and registry.loaded() == []


def test_a_refused_version_is_not_tried_again_until_a_newer_one(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("birds", BIRDS)
    model_file = store.get("birds").model_path
    damaged = bytearray(BIRDS)
    damaged[len(damaged) // 2] ^= 0xFF
    model_file.write_bytes(bytes(damaged))
    registry = ModelRegistry(store)
    assert registry.refresh_all(["birds"]) == []
    (status,) = registry.statuses()
    assert (status.failed_version, status.error) == (
        1,
        "model 'birds' version 1: model.tflite does not match the manifest's sha256",
    )
    model_file.write_bytes(BIRDS)  # repaired in place: version 1 failed, it is not read again
    assert registry.refresh("birds") is False and registry.loaded() == []
    store.put("birds", MOBILENET)
    assert registry.refresh_all(["birds"]) == ["birds"]
    (status,) = registry.statuses()
    assert (status.version, status.error, registry.get("birds").version) == (2, None, 2)


def test_a_model_of_an_encoding_with_no_backend_is_refused_with_the_reason(tmp_path: Path) -> None:
    """A manifest naming an encoding this service has no backend for (a newer uploader's): the
    version is refused, its status says why, the version before it keeps serving."""
    daprd = new_daprd()
    try:
        with sidecar_env(daprd), DaprClient() as client:
            store = DaprStore(client, tmp_path / "cache")
            store.put("m", BIRDS)
            registry = ModelRegistry(store)
            assert registry.refresh("m") is True
            record = json.loads(daprd.state("statestore")["statestore||model/m"])
            onnx = {**record, "version": 2, "encoding": "onnx"}
            daprd.put_raw("statestore", "model/m", json.dumps(onnx).encode())
            assert registry.refresh("m") is False
            (status,) = registry.statuses()
            assert status.error == "model 'm' cannot be loaded: no inference backend for onnx models"
            assert (status.failed_version, registry.get("m").version) == (2, 1)
    finally:
        daprd.close()


def test_a_watcher_stopped_before_it_started_never_polls(tmp_path: Path) -> None:
    """The service stopping during start-up: stop() before start() returns, and the loop a late
    start() begins ends at once."""
    store = LocalStore(tmp_path)
    classifier = Classifier(Settings(store_dir=tmp_path), store=store)
    try:
        watcher = Watcher(classifier, None, poll_s=0.01)
        watcher.stop()
        store.put("birds", BIRDS)
        watcher.start()
        watcher.stop()
        assert classifier.models.loaded() == []  # no poll ran
    finally:
        classifier.close()


def test_a_guest_update_for_another_guest_leaves_the_services_guest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_guest("logic", CLASSIFY)
    classifier = Classifier(Settings(store_dir=tmp_path), store=store)
    try:
        watcher = Watcher(classifier, "logic", poll_s=3600)
        assert watcher.refresh_guest() is True
        store.put_guest("logic", DESCRIBE)  # version 2, its event not seen yet
        store.put_guest("other", DESCRIBE)
        watcher.on_update("guest", "other")
        assert watcher.refresh_guest() is True  # logic's version 2 was still to take
        watcher.on_update("guest", "logic")
        assert watcher.refresh_guest() is False
    finally:
        classifier.close()


def test_a_guest_update_while_the_store_is_unavailable_is_raised_for_a_retry(tmp_path: Path) -> None:
    """The edge answers RETRY for the model-updates event: the error is raised, not recorded."""
    daprd = new_daprd()
    try:
        with sidecar_env(daprd), DaprClient() as client:
            store = DaprStore(client, tmp_path / "cache")
            store.put_guest("logic", CLASSIFY)
            classifier = Classifier(Settings(store_dir=tmp_path), store=store)
            try:
                watcher = Watcher(classifier, "logic", poll_s=3600)
                daprd.fail_next("GetState", grpc.StatusCode.UNAVAILABLE)
                with pytest.raises(ClassifierError) as exc:
                    watcher.on_update("guest", "logic")
                assert exc.value.kind == ErrorKind.UNAVAILABLE
                assert watcher.guest_error is None
                watcher.on_update("guest", "logic")  # the retry
                assert watcher.refresh_guest() is False  # active now
            finally:
                classifier.close()
    finally:
        daprd.close()
