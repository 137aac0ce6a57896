"""The SCF scenario through the real daprd and Redis (issue 19): `classifier models put ... --guest
mnist` through the sidecar, then the SCF test event (an API-gateway event whose body is
`{"image_base64": ..., "image_url": ""}`) through daprd's HTTP invoke API, answering the digit of a
black-on-white sample; `models set-guest` back to the service's guest misreads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MODELS
from real_dapr import Stack, stack, wait_for
from test_seeds import black_on_white, gateway_event, scf_body

pytestmark = pytest.mark.dapr

MNIST = MODELS / "mnist_lstm_uint8"
CLASSIFIER = Path(sys.executable).with_name("classifier")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("real-seeds")
    with stack(workdir, CLASSIFIER_POLL_S="1") as running:
        yield running


def cli(built: Stack, *args: str) -> str:
    """`classifier ARGS` against the stack's sidecar, as a user runs it beside `dapr run`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_"))}
    env.update({k: v for k, v in built.daprd.env().items() if k.startswith("DAPR_")})
    env["CLASSIFIER_CACHE_DIR"] = str(built.workdir / "cli-cache")
    done = subprocess.run([CLASSIFIER, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def models(built: Stack) -> dict[str, dict]:
    answer = built.daprd.invoke("models", timeout=30)
    return {m["name"]: m for m in answer.json()["models"]} if answer.status == 200 else {}


def test_the_scf_test_event_through_daprd_answers_the_digit(built: Stack) -> None:
    out = cli(built, "models", "put", "digits", str(MNIST / "model.tflite"),
              "--labels", str(MNIST / "labels.txt"), "--guest", "mnist")  # fmt: skip
    assert out == "stored digits version 1 (13928 bytes, 10 classes, labels file, guest mnist)\n"
    wait_for(lambda: models(built).get("digits", {}).get("ready"), 90, "digits loaded")
    assert models(built)["digits"]["guest"] == "mnist"

    event = gateway_event(json.dumps(scf_body(black_on_white(7))))  # the only model: no name needed
    answer = built.daprd.invoke("classify", json.dumps(event).encode(), timeout=60)
    assert answer.status == 200, answer.body
    assert answer.json()["result"] == 7 and answer.json()["model"] == "digits"

    assert cli(built, "models", "set-guest", "digits") == "stored digits version 2: the service's guest\n"
    wait_for(lambda: models(built)["digits"]["version"] == 2, 90, "version 2 active")
    plain = built.daprd.invoke("classify", json.dumps(event).encode(), timeout=60).json()
    assert "result" not in plain and plain["predictions"][0]["index"] != 7  # the default guest misreads it
