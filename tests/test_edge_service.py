"""The service's lifecycle in process (service/edge/app.py ClassifierService on the local store,
on real loopback sockets): a port it cannot have, start-up that fails for good, a stop that comes
during start-up or twice."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import IMAGES, MODELS
from dapr.clients import DaprClient
from service_process import new_daprd, sidecar_env, upload

from service.config import ServeSettings, Settings
from service.edge.app import ClassifierService
from service.edge.classifier_pb2 import ClassifyRequest, ClassifyResponse
from service.stores.dapr import DaprStore
from service.stores.local import LocalStore

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def start_up_thread() -> threading.Thread | None:
    return next((t for t in threading.enumerate() if t.name == "start-up"), None)


def new_service(store_dir: Path, **serve: object) -> ClassifierService:
    return ClassifierService(Settings(store_dir=store_dir), ServeSettings(port=0, metrics_port=0, **serve))  # type: ignore[arg-type]


def test_a_port_already_taken_is_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ClassifierService(Settings(store_dir=tmp_path), ServeSettings(port=port, metrics_port=0))
        try:
            with pytest.raises(OSError) as exc:
                service.start()
            assert str(exc.value) == f"cannot listen on 127.0.0.1:{port}"
        finally:
            service.stop(grace_s=0)


def test_a_cache_directory_that_is_a_file_fails_start_up_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a directory")
    service = new_service(tmp_path)
    try:
        service.start()
        assert service.failed.wait(60)
        assert service.startup_error == f"{tmp_path / 'cache'}: File exists"
        assert not service.ready.is_set()
    finally:
        service.stop(grace_s=0)


def test_a_damaged_manifest_fails_start_up_naming_the_version(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("birds", (MODELS / "aiy_birds_v1" / "model.tflite").read_bytes())
    (store._models.current_dir("birds") / "manifest.json").write_text("{broken")
    service = new_service(tmp_path)
    try:
        service.start()
        assert service.failed.wait(60)
        assert service.startup_error is not None
        assert service.startup_error.startswith("model 'birds' version 1: manifest.json is not valid JSON")
    finally:
        service.stop(grace_s=0)


def test_a_stop_while_start_up_waits_for_a_model_ends_start_up_and_a_second_stop_returns(
    tmp_path: Path,
) -> None:
    service = new_service(tmp_path, poll_s=0.05)
    service.start()
    wait_until(lambda: service.startup_error is not None)  # waiting: the store holds no model
    assert service.startup_error == "no model in the store yet: upload one with `classifier models put`"
    thread = start_up_thread()
    assert thread is not None
    service.stop(grace_s=0)
    thread.join(30)
    assert not thread.is_alive()
    service.stop(grace_s=0)  # stopped already: returns at once
    LocalStore(tmp_path).put("birds", (MODELS / "aiy_birds_v1" / "model.tflite").read_bytes())
    assert not service.ready.is_set() and service.classifier is None
    assert not [t for t in threading.enumerate() if t.name == "store-watcher"]  # nothing left polling


def test_update_events_wait_for_start_up_and_a_plain_text_guest_answers_in_output_json(
    tmp_path: Path, test_guests: dict[str, Path]
) -> None:
    """With the daprd double as the sidecar: a model-updates event that comes while start-up
    waits for a model is retried (not lost), a malformed one dropped; a model whose guest
    answers plain text gets a protobuf answer with that text in output_json and no predictions."""
    daprd = new_daprd(resiliency=None)  # one attempt per delivery: each answer is seen as given
    try:
        with sidecar_env(daprd):
            service = ClassifierService(
                Settings(store_dir=tmp_path),
                ServeSettings(port=daprd.app_port or 0, metrics_port=0, dapr=True, poll_s=3600),
            )
            service.start()
            try:
                daprd.wait_for_app(timeout=60)
                wait_until(lambda: service.startup_error is not None and "no model" in service.startup_error)
                update = json.dumps({"kind": "model", "name": "birds"}).encode()
                assert daprd.deliver("updates", "model-updates", update).status == "RETRY"
                assert daprd.deliver("updates", "model-updates", b"not json").status == "DROP"
                upload(daprd, tmp_path, "birds", "aiy_birds_v1")
                wait_until(service.ready.is_set)
                assert daprd.deliver("updates", "model-updates", update).status == "SUCCESS"

                with DaprClient() as client:
                    store = DaprStore(client, tmp_path / "uploader-cache")
                    store.put_guest("plain", test_guests["plain_text"].read_bytes())
                    assert store.set_guest("birds", "plain").version == 2
                assert daprd.deliver("updates", "model-updates", update).status == "SUCCESS"
                request = ClassifyRequest(image=BIRD, model="birds")
                result = daprd.invoke("classify", request.SerializeToString(), "application/x-protobuf")
                assert result.code == grpc.StatusCode.OK, result.details
                response = ClassifyResponse.FromString(result.data)
                assert (response.version, list(response.predictions)) == (2, [])
                output = json.loads(response.output_json)["output"]
                assert output == f"plain text from a guest: --model, {len(BIRD)} bytes"
            finally:
                service.stop(grace_s=0)
    finally:
        daprd.close()
