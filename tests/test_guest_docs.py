"""docs/guests.md "Building a guest in C": its commands, run as shown, print what it shows."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

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
