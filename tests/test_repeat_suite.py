"""tools/repeat_suite.py: several runs in a row name the test that failed in only one of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLAKY = """
from pathlib import Path

def test_steady():
    assert True

def test_fails_after_the_first_run():
    marker = Path(__file__).with_name("ran")
    first = not marker.exists()
    marker.touch()
    assert first, "boom on a later run"
"""


def repeat(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tools.repeat_suite", "--out", str(tmp_path / "out"), *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_test_that_fails_in_one_run_of_three_is_named_with_its_run(tmp_path: Path) -> None:
    (tmp_path / "test_flaky.py").write_text(FLAKY)
    done = repeat(tmp_path, "--runs", "3", "--", "test_flaky.py")
    assert done.returncode == 1, done.stderr
    report = done.stdout[done.stdout.index("3 runs of the suite:") :].splitlines()
    assert report[1].startswith("  run 1: 2 tests, 0 failed, ")
    assert report[2].startswith("  run 2: 2 tests, 1 failed, ")
    assert report[3].startswith("  run 3: 2 tests, 1 failed, ")
    assert report[4:] == [
        "1 tests failed at least once:",
        "  test_flaky::test_fails_after_the_first_run: failed in 2 of 3 (run 2, 3): "
        "AssertionError: boom on a later run",
    ]
    again = repeat(tmp_path, "--report")
    assert again.returncode == 1
    assert again.stdout.splitlines()[4:] == report[4:]


def test_runs_that_all_pass_exit_0(tmp_path: Path) -> None:
    (tmp_path / "test_steady.py").write_text("def test_steady():\n    assert True\n")
    done = repeat(tmp_path, "--runs", "2", "--", "test_steady.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "no test failed in any run"


def test_report_without_runs_is_one_line(tmp_path: Path) -> None:
    done = repeat(tmp_path, "--report")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"no runs in {tmp_path / 'out'}\n"
