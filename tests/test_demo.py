"""`classifier demo` (the README's first command) and how it waits for `serve`, as daprd does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from conftest import IMAGES, MODELS, ROOT, SHARED

from service.demo import free_port, wait_healthy


def classifier(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "--store", str(store), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_demo_classifies_through_serve_and_stops_cleanly(tmp_path: Path) -> None:
    birds = MODELS / "aiy_birds_v1"
    put = classifier(
        "models", "put", "birds", str(birds / "model.tflite"), "--labels", str(birds / "labels.txt"),
        store=tmp_path,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    expected = next(
        case["top1_label"]
        for case in json.loads((SHARED / "expected.json").read_text())["cases"]
        if case["model"] == "aiy_birds_v1" and case["image"] == "images/classify/bird.jpg"
    )
    demo = classifier("demo", str(IMAGES / "classify" / "bird.jpg"), "--model", "birds", store=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    bird_line = next(line for line in demo.stdout.splitlines() if line.startswith(str(IMAGES)))
    assert expected in bird_line
    assert "stopped on SIGTERM with exit code 0" in demo.stdout


def test_waiting_for_serve_reports_a_process_that_died_during_start_up() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    server.wait()
    with (
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        pytest.raises(RuntimeError, match="exited with code 3"),
    ):
        wait_healthy(channel, server, port, timeout_s=30)


def test_waiting_for_serve_gives_up_when_nothing_listens() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            pytest.raises(RuntimeError, match=f"did not listen on port {port}"),
        ):
            wait_healthy(channel, server, port, timeout_s=0.3)
    finally:
        server.kill()
        server.wait()


def put_birds(store: Path) -> None:
    birds = MODELS / "aiy_birds_v1"
    put = classifier(
        "models",
        "put",
        "birds",
        str(birds / "model.tflite"),
        "--labels",
        str(birds / "labels.txt"),
        store=store,
    )
    assert put.returncode == 0, put.stderr


def test_an_image_the_service_refuses_is_its_line_and_the_others_go_on(tmp_path: Path) -> None:
    put_birds(tmp_path / "store")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    bird = IMAGES / "classify" / "bird.jpg"
    demo = classifier("demo", str(notes), str(bird), "--model", "birds", store=tmp_path / "store")
    assert demo.returncode == 1, demo.stdout + demo.stderr
    lines = demo.stdout.splitlines()
    assert any(line.startswith(f"{notes}: INVALID_ARGUMENT ") for line in lines), lines
    assert any(line.startswith(f"{bird}: Aix galericulata ") for line in lines), lines
    assert lines[-1] == "classifier serve stopped on SIGTERM with exit code 0"


def test_a_serve_that_fails_to_start_is_said_with_its_log(tmp_path: Path) -> None:
    """The model's file damaged after it was stored: serve exits during start-up; the demo says so, shows
    serve's own last lines, and exits 1."""
    put_birds(tmp_path / "store")
    [model_file] = (tmp_path / "store").glob("models/birds/*/*.tflite")
    model_file.write_bytes(model_file.read_bytes()[:-1] + b"!")
    demo = classifier(
        "demo", str(IMAGES / "classify" / "bird.jpg"), "--model", "birds", store=tmp_path / "store"
    )
    assert demo.returncode == 1
    assert demo.stdout.splitlines()[-1] == "classifier serve stopped on SIGTERM with exit code 1"
    err = demo.stderr.splitlines()
    # (the demo's gRPC channel may log serve's GOAWAY first: gRPC core's own line)
    assert "classifier demo: classifier serve exited with code 1 during start-up" in err, err
    assert err[-1].startswith("classifier: start-up failed: model 'birds' version 1"), err  # serve's own line


def test_waiting_for_a_serve_that_listens_but_is_never_healthy(capsys) -> None:
    """Something on the port that is not the gRPC app: the wait says it waits (every PROGRESS_EVERY_S),
    then gives up at its deadline."""
    from service.demo import PROGRESS_EVERY_S, START_TIMEOUT_S, _say_waiting

    port = free_port()
    listener = subprocess.Popen(
        [sys.executable, "-c", f"import socket, time; s = socket.create_server(('127.0.0.1', {port})); "
         "print('ready', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            pytest.raises(RuntimeError, match=r"^classifier serve was not healthy within 6 s$"),
        ):
            wait_healthy(channel, listener, port, timeout_s=6, progress=_say_waiting)
    finally:
        listener.kill()
        listener.wait()
    assert PROGRESS_EVERY_S < 6
    assert capsys.readouterr().err == (
        "classifier demo: waiting for classifier serve to become healthy "
        f"(5/{START_TIMEOUT_S:g} s; Ctrl-C to stop)\n"
    )
