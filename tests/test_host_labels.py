"""The built-in guest runs without the labels file; the host attaches the model's labels to its
predictions, exactly as the guest did when it read the file. Other guests keep the file."""

from __future__ import annotations

import json

import pytest
from conftest import IMAGES, MODELS, ROOT

from service.config import Settings
from service.pipeline import Classifier
from service.stores.local import LocalStore
from service.wasm.call import GuestCall

BIRDS = (MODELS / "aiy_birds_v1" / "model.tflite").read_bytes()
BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
NUM_CLASSES = 965


def guest_predictions(classifier: Classifier, labels_file: bool, top_k: int) -> list[dict]:
    """The built-in guest's own output for the bird, with or without the labels file."""
    loaded = classifier.model("birds")
    call = GuestCall(named_graphs={loaded.name: loaded.graph})
    result = classifier.run_default_guest(classifier.guest, loaded, BIRD, top_k, call, labels=labels_file)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["predictions"]


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_host_labels_equal_the_labels_the_guest_read(store: LocalStore, tmp_path) -> None:
    # Labels the guest's parser and the host's must agree on: quotes, a backslash, non-ASCII, a CR.
    labels = [f'class "{i}" \\ é\r' if i % 2 else f"class {i}" for i in range(NUM_CLASSES)]
    store.put("birds", BIRDS, labels=labels)
    classifier = Classifier(Settings(store_dir=tmp_path / "store"), store=store)
    try:
        assert classifier.host_attaches_labels(classifier.business)
        served = classifier.classify(BIRD, "birds", top_k=10)["predictions"]
        from_file = guest_predictions(classifier, labels_file=True, top_k=10)
        without_file = guest_predictions(classifier, labels_file=False, top_k=10)
    finally:
        classifier.close()
    assert served == from_file
    assert all(p["label"] is None for p in without_file)  # what the guest prints, run as served
    assert [p["index"] for p in without_file] == [p["index"] for p in served]
    assert any(p["label"].startswith('class "') for p in served)


def test_a_model_without_labels_gets_null_labels(store: LocalStore, tmp_path) -> None:
    float_model = (MODELS / "mobilenet_v1_0.25_224_float" / "model.tflite").read_bytes()
    store.put("plain", float_model)  # no labels given, none in its metadata
    classifier = Classifier(Settings(store_dir=tmp_path / "store"), store=store)
    try:
        assert classifier.model("plain").labels == ()
        predictions = classifier.classify(BIRD, "plain")["predictions"]
    finally:
        classifier.close()
    assert predictions and all(p["label"] is None for p in predictions)


def test_another_default_interface_guest_still_reads_the_labels_file(store: LocalStore, tmp_path) -> None:
    store.put("birds", BIRDS)
    describe = (ROOT / "wasm" / "bin" / "describe.wasm").read_bytes()
    classifier = Classifier(Settings(store_dir=tmp_path / "store"), store=store, guest_wasm=describe)
    try:
        assert not classifier.host_attaches_labels(classifier.business)
        response = classifier.classify(BIRD, "birds")
    finally:
        classifier.close()
    assert response["predictions"][0]["label"] == "Aix galericulata"
    assert "Aix galericulata" in json.dumps(response)  # its own sentence names it too
