"""docs/deploy.md in step with the code: its offline-check command is run as shown and prints what
is shown, and its diagram is what docs/deploy_diagram.py draws now."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import ROOT
from matplotlib import image as mpimg

DOC = ROOT / "docs" / "deploy.md"
GO_TIMEOUT_S = 1800  # a cold Go build cache (tests/test_deploy_manifests.py)


def shown_blocks() -> list[str]:
    return re.findall(r"```(?:sh|)\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_offline_check_prints_what_the_doc_shows() -> None:
    blocks = shown_blocks()
    command_index = next(i for i, block in enumerate(blocks) if "go run . check" in block)
    command, expected = blocks[command_index].strip(), blocks[command_index + 1]
    directory, _, check = command.partition(" && ")
    assert directory.startswith("cd ")
    result = subprocess.run(
        shlex.split(check),
        cwd=ROOT / directory.removeprefix("cd "),
        capture_output=True,
        text=True,
        timeout=GO_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


def test_the_diagram_is_current(tmp_path: Path) -> None:
    drawn = tmp_path / "deploy.png"
    subprocess.run(
        [sys.executable, str(ROOT / "docs" / "deploy_diagram.py"), str(drawn)], check=True, timeout=120
    )
    committed, fresh = mpimg.imread(ROOT / "docs" / "deploy.png"), mpimg.imread(drawn)
    # Pixel for pixel (one changed letter is ~0.01 % of them); another matplotlib or FreeType
    # version may draw glyphs differently: then redraw and commit.
    assert committed.shape == fresh.shape
    assert np.array_equal(committed, fresh), "docs/deploy.png is stale: python docs/deploy_diagram.py"


def test_the_doc_names_files_that_exist() -> None:
    for path in re.findall(r"`((?:deploy|tools|docs|components)/[\w./-]+)`", DOC.read_text()):
        assert (ROOT / path.rstrip("/")).exists(), path
