"""Readiness, as daprd and the kubelet probe it: `classifier serve` as a process, driven over real
gRPC sockets by the daprd double, with models in the double's state store.

- grpc.health.v1.Health/Check (the kubelet's readiness probe in deploy/kubernetes) says SERVING
  only once the models are loaded and daprd's app health probe has found the app healthy (before
  that probe daprd refuses calls): a pod joins its Service's endpoints only when daprd takes calls.
- Both are answered while every worker is busy: daprd's probe used to queue behind the calls in
  flight and time out under load; daprd then stopped the subscription, and the events it had read
  ahead waited a whole processingTimeout (60 s) to be delivered again.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import IMAGES
from daprd import FakeDaprd
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from service_process import ServiceProcess, new_daprd, upload

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()


def _health_response_class() -> type:
    """grpc.health.v1.HealthCheckResponse from its definition (health.proto), to parse the
    app's answer independently of how the app encodes it."""
    proto = descriptor_pb2.FileDescriptorProto(name="health_test.proto", package="grpc.health.v1")
    message = proto.message_type.add(name="HealthCheckResponse")
    enum = message.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        enum.value.add(name=name, number=number)
    message.field.add(
        name="status",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse"))


HealthCheckResponse = _health_response_class()


def grpc_health(port: int) -> str:
    """What the kubelet's `grpc` probe gets: Check with an empty HealthCheckRequest (service "")."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5)
    status = HealthCheckResponse.FromString(answer).status
    return str(
        HealthCheckResponse.DESCRIPTOR.enum_types_by_name["ServingStatus"].values_by_number[status].name
    )


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_grpc_health_is_serving_once_the_models_are_loaded_and_daprd_saw_it(tmp_path: Path) -> None:
    daprd = new_daprd()
    service = ServiceProcess(daprd, tmp_path)
    try:
        daprd.wait_for_app(30)
        wait_for(lambda: "waiting for a model" in service.log(), 60, "start-up found the store empty")
        assert grpc_health(daprd.app_port) == "NOT_SERVING"
        assert not daprd.health_check()

        upload(daprd, tmp_path, "birds", "aiy_birds_v1")
        wait_for(lambda: "ready: models" in service.log(), 60, "the models loaded")
        assert grpc_health(daprd.app_port) == "NOT_SERVING"  # daprd's last probe failed: it refuses calls
        assert daprd.health_check()
        assert grpc_health(daprd.app_port) == "SERVING"
        assert daprd.invoke("classify", BIRD, querystring="model=birds").code == grpc.StatusCode.OK
    finally:
        assert service.terminate() == 0
        daprd.close()


class HeldImage:
    """An HTTP server whose one image is sent only when the test releases it: a call fetching
    it keeps its handler busy for as long as the test wants."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.release = threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(BIRD)))
                self.end_headers()
                held.requested.set()
                # A byte every 0.5 s until released: slow, never idle for the fetcher's timeout.
                sent = 0
                while not held.release.wait(0.5) and sent < 240:
                    self.wfile.write(BIRD[sent : sent + 1])
                    self.wfile.flush()
                    sent += 1
                self.wfile.write(BIRD[sent:])

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/bird.jpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held_image() -> Iterator[HeldImage]:
    held = HeldImage()
    yield held
    held.close()


def test_health_is_answered_while_the_only_worker_is_busy(tmp_path: Path, held_image: HeldImage) -> None:
    daprd: FakeDaprd = new_daprd()
    upload(daprd, tmp_path, "birds", "aiy_birds_v1")
    service = ServiceProcess(
        daprd,
        tmp_path,
        CLASSIFIER_WORKERS="1",
        CLASSIFIER_IMAGE_URL_ALLOWLIST=held_image.url.rsplit("/", 1)[0] + "/",
    )
    answers: list[object] = []
    try:
        service.wait_ready()
        body = json.dumps({"image_url": held_image.url, "model": "birds"}).encode()
        call = threading.Thread(target=lambda: answers.append(daprd.invoke("classify", body)))
        call.start()
        assert held_image.requested.wait(30), "the call never fetched its image"
        # The one call in flight holds its handler; the probes are answered meanwhile.
        assert daprd.health_check()
        assert grpc_health(daprd.app_port) == "SERVING"
        assert not answers  # still in flight
        held_image.release.set()
        call.join(60)
        (answer,) = answers
        assert answer.code == grpc.StatusCode.OK, answer.details  # type: ignore[attr-defined]
        assert json.loads(answer.data)["predictions"][0]["label"] == "Aix galericulata"  # type: ignore[attr-defined]
    finally:
        held_image.release.set()
        assert service.terminate() == 0
        daprd.close()
