"""docs/guests.md's examples (a guest in C, a Rust wasi-nn guest): their commands, run as shown,
print what they show."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, SHARED


def console_steps(markdown: str, heading: str) -> list[tuple[str, list[str]]]:
    """(command, shown output lines) of the first `console` block under `heading`."""
    section = markdown.split(heading, 1)[1]
    block = re.search(r"```console\n(.*?)```", section, flags=re.S)
    assert block, f"no console block under {heading}"
    steps: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def test_the_guest_example_runs_as_shown(tmp_path: Path) -> None:
    # A project root of its own (the example writes my_guest.c and my_guest.wasm there), with
    # ../shared beside it, as in the checkout.
    work = tmp_path / "project"
    work.mkdir()
    (work / "wasm").symlink_to(ROOT / "wasm")
    (tmp_path / "shared").symlink_to(SHARED)
    steps = console_steps((ROOT / "docs" / "guests.md").read_text(), "## Building a guest in C")
    assert [command.split()[0] for command, _ in steps] == ["cp", "python", "classifier"]
    env = {**os.environ, "CLASSIFIER_CACHE_DIR": str(tmp_path / "cache")}
    for command, shown in steps:
        done = subprocess.run(
            command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        assert done.stdout.splitlines() == shown, command


def test_the_shipped_guests_example_runs_as_shown(tmp_path: Path) -> None:
    """docs/guests.md "A model's own guest": the mnist and describe guests named by their models."""
    work = tmp_path / "project"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    steps = console_steps((ROOT / "docs" / "guests.md").read_text(), "### A model's own guest")
    assert [command.split()[1] for command, _ in steps if command.startswith("classifier ")] == [
        "models", "classify", "classify", "models", "classify", "models", "models",
    ]  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_"))},
        "CLASSIFIER_STORE": str(tmp_path / "store"),
        "CLASSIFIER_CACHE_DIR": str(tmp_path / "cache"),
    }
    for command, shown in steps:
        done = subprocess.run(
            command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        printed = done.stdout.splitlines()
        if "--json" in command:  # the time a run took is its own
            printed = [re.sub(r'"elapsed_ms": [0-9.]+', '"elapsed_ms": 0', line) for line in printed]
            shown = [re.sub(r'"elapsed_ms": [0-9.]+', '"elapsed_ms": 0', line) for line in shown]
        assert printed == shown, command


RUST_HEADING = "### A published WasmEdge example: the wasi-nn TFLite birds"
# cargo's build directory, kept between runs: a second build of unchanged sources is a no-op.
CARGO_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dapr-wasm-classifier" / "rust"


def _wasm32_wasip1_installed() -> bool:
    rustup = shutil.which("rustup")
    if rustup is None:
        return False
    targets = subprocess.run([rustup, "target", "list", "--installed"], capture_output=True, text=True)
    return "wasm32-wasip1" in targets.stdout.split()


def test_the_rust_wasi_nn_guest_builds_and_runs_as_shown(tmp_path: Path) -> None:
    """docs/guests.md's stand-in for WasmEdge's tflite-birds example: built with cargo from
    crates.io, run with `classifier wasm run` and as the business logic of `classify`."""
    if shutil.which("cargo") is None:
        pytest.skip("no cargo here: the Rust guest is built with it")
    assert _wasm32_wasip1_installed(), (
        "Rust lacks the wasm32-wasip1 target: `rustup target add wasm32-wasip1`"
    )
    work = tmp_path / "project"
    (work / "wasm").mkdir(parents=True)
    shutil.copytree(ROOT / "wasm" / "rust", work / "wasm" / "rust")  # cargo writes nothing into the checkout
    CARGO_CACHE.mkdir(parents=True, exist_ok=True)
    (work / "build").mkdir()
    (work / "build" / "rust").symlink_to(CARGO_CACHE)
    (tmp_path / "shared").symlink_to(SHARED)
    steps = console_steps((ROOT / "docs" / "guests.md").read_text(), RUST_HEADING)
    assert [command.split()[:3] for command, _ in steps] == [
        ["cargo", "build", "--quiet"],
        ["classifier", "wasm", "run"],
        ["classifier", "wasm", "run"],
        ["classifier", "models", "put"],
        ["classifier", "classify", "../shared/images/classify/bird.jpg"],
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_"))}
    env.update(CLASSIFIER_STORE=str(tmp_path / "store"), CLASSIFIER_CACHE_DIR=str(tmp_path / "cache"))
    for command, shown in steps:
        done = subprocess.run(
            command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        printed = done.stdout.splitlines()
        if command.startswith("classifier classify"):  # the time it took differs
            printed = [re.sub(r'"elapsed_ms": [\d.]+', '"elapsed_ms": T', line) for line in printed]
            shown = [re.sub(r'"elapsed_ms": [\d.]+', '"elapsed_ms": T', line) for line in shown]
        assert printed == shown, command
