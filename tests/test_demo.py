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
