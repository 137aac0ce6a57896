"""`classifier demo`: the service end to end with no Dapr installed.

Starts `classifier serve` on the local store (no sidecar), then does what daprd does
with a gRPC app: waits for the port, lists the subscriptions, polls the health check
until the models are loaded, and sends each image through `OnInvoke` the way
`dapr invoke --method classify --data-file IMAGE` would (raw bytes, content type
application/json). Ends with SIGTERM, as `dapr run` does, and reports the exit code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from google.protobuf import any_pb2, empty_pb2

from .command_input import read_input
from .config import ServeSettings, Settings
from .errors import ClassifierError
from .logs import say_waiting
from .stores.local import LocalStore

START_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(
    env: dict[str, str], port: int | None = None, **popen: Any
) -> tuple[subprocess.Popen[Any], int]:
    """`classifier serve` on the embedded store (no sidecar), on a free port unless given."""
    port = port or free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DAPR_")}
    environment.setdefault("CLASSIFIER_METRICS_PORT", "0")  # a demo needs no /metrics (nor port 9464)
    environment.update(env, APP_PORT=str(port))
    # A Ctrl-C while Popen starts the child (it waits for the exec) would raise before the caller
    # owns the process, which would then outlive the command: it waits until the child is owned.
    interrupted: list[int] = []
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if on_main_thread else None  # None: not set from Python
    if previous is not None:
        signal.signal(signal.SIGINT, lambda signum, _: interrupted.append(signum))
    try:
        server = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=environment, **popen)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        stop_serve(server)
        raise KeyboardInterrupt
    return server, port


def stop_serve(server: subprocess.Popen[Any]) -> int:
    """SIGTERM, as `dapr run` stops an app; the exit code."""
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def invoke_request(image: bytes, model: str, top_k: int) -> common_pb2.InvokeRequest:
    """What daprd sends the app for `dapr invoke --method classify --data-file IMAGE`."""
    return common_pb2.InvokeRequest(
        method="classify",
        data=any_pb2.Any(value=image),
        content_type="application/json",  # what `dapr invoke --data-file` sends
        http_extension=common_pb2.HTTPExtension(
            verb=common_pb2.HTTPExtension.POST, querystring=f"model={model}&top_k={top_k}"
        ),
    )


def run_demo(
    settings: Settings, images: list[Path], model: str, top_k: int, ui_port: int | None = None
) -> int:
    # What cannot work is said before anything starts: a server waiting for a model that is not
    # stored would wait the whole START_TIMEOUT_S.
    bodies = [read_input(image) for image in images]
    try:
        LocalStore(settings.store_dir).manifest(model)
    except ClassifierError as exc:
        raise ClassifierError(
            exc.kind,
            f"{exc.message}: store it with `classifier models put {model} MODEL.tflite`, "
            "or see `classifier models list`",
        ) from exc
    server, port = start_serve(
        {"CLASSIFIER_STORE": str(settings.store_dir), "CLASSIFIER_MODELS": model},
        stderr=subprocess.PIPE,
        text=True,
    )
    print(f"started classifier serve (pid {server.pid}) on port {port}")
    failed = 0
    server_failed = False
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_healthy(channel, server, port, progress=_say_waiting)
            print("healthy; classifying through OnInvoke, as daprd would")
            app = appcallback_pb2_grpc.AppCallbackStub(channel)
            for image, body in zip(images, bodies, strict=True):
                try:
                    response = app.OnInvoke(invoke_request(body, model, top_k), timeout=30)
                    print(f"{image}: {_summary(json.loads(response.data.value))}")
                except grpc.RpcError as exc:
                    failed += 1
                    print(f"{image}: {exc.code().name} {exc.details()}")
            if ui_port is not None:  # the page over the same serve, until Ctrl-C
                from .ui.server import serve_app_page

                describe = f"classifier serve (pid {server.pid}) through OnInvoke, as daprd would call it"
                serve_app_page(port, ui_port, describe, ServeSettings.from_env())
    except RuntimeError as exc:
        print(f"classifier demo: {exc}", file=sys.stderr)
        server_failed = True
    finally:
        code = stop_serve(server)
        server_log = server.stderr.read() if server.stderr is not None else ""
        if server_failed or code != 0:
            sys.stderr.write(server_log[-4000:])
        print(f"classifier serve stopped on SIGTERM with exit code {code}")
    return 1 if failed or server_failed or code != 0 else 0


def _say_waiting(waited_s: float) -> None:
    say_waiting(
        "classifier demo: waiting for classifier serve to become healthy "
        f"({waited_s:.0f}/{START_TIMEOUT_S:g} s; Ctrl-C to stop)"
    )


def wait_healthy(
    channel: grpc.Channel,
    server: subprocess.Popen[Any],
    port: int,
    timeout_s: float = START_TIMEOUT_S,
    progress: Callable[[float], None] | None = None,
) -> None:
    """As daprd does: wait until the app port accepts a TCP connection, list the
    subscriptions, then poll the health check until it passes. `progress(waited_s)` is
    called every PROGRESS_EVERY_S while waiting."""
    started = time.monotonic()
    deadline = started + timeout_s
    next_progress = started + PROGRESS_EVERY_S

    def still_waiting() -> None:
        nonlocal next_progress
        now = time.monotonic()
        if progress is not None and now >= next_progress:
            progress(now - started)
            next_progress = now + PROGRESS_EVERY_S

    # Connecting first keeps the gRPC channel out of its reconnect backoff (~1 s after a
    # refused connection), which would otherwise be timed as start-up.
    while not _accepts_connections(port):
        _check_running(server)
        still_waiting()
        if time.monotonic() >= deadline:
            raise RuntimeError(f"classifier serve did not listen on port {port} within {timeout_s:g} s")
        time.sleep(0.02)
    health = channel.unary_unary(
        "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck",
        request_serializer=empty_pb2.Empty.SerializeToString,
        response_deserializer=lambda data: data,
    )
    app = appcallback_pb2_grpc.AppCallbackStub(channel)
    listed = False
    while time.monotonic() < deadline:
        _check_running(server)
        still_waiting()
        try:
            if not listed:
                app.ListTopicSubscriptions(empty_pb2.Empty(), timeout=1)
                listed = True
            health(empty_pb2.Empty(), timeout=1)
            return
        except grpc.RpcError:
            time.sleep(0.02)  # fine-grained: the benchmark times start-up with it
    raise RuntimeError(f"classifier serve was not healthy within {timeout_s:g} s")


def _accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _check_running(server: subprocess.Popen[Any]) -> None:
    if server.poll() is not None:
        raise RuntimeError(f"classifier serve exited with code {server.returncode} during start-up")


def _summary(response: dict[str, Any]) -> str:
    predictions = response.get("predictions") or []
    top = ", ".join(f"{p.get('label') or p.get('index')} {float(p.get('score', 0)):.3f}" for p in predictions)
    return f"{top}  [{response.get('model')} v{response.get('version')}, {response.get('elapsed_ms')} ms]"
