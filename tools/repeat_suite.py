"""Run the test suite several times in a row, in one job, and name every test that ever failed.

    python -m tools.repeat_suite --runs 5                      # the whole suite, 5 times (~1.5 h)
    python -m tools.repeat_suite --runs 3 -- tests/test_x.py   # arguments after -- go to pytest
    python -m tools.repeat_suite --report                      # the report of the runs in --out again

A test that fails once in five runs is flaky: a wait that is not bounded by an event, a race after a
signal, a port or a file shared between tests. One run cannot show that; this does. Each run writes a
JUnit XML file to --out (kept for the record); the report reads them back, so it also covers a run
that was stopped part-way. Exits 1 when any test failed in any run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunResult:
    run: int
    tests: int
    failed: dict[str, str]  # test id -> the first line of its failure
    seconds: float


def read_junit(path: Path, run: int) -> RunResult:
    """One run's JUnit XML: how many tests ran, which failed (errors in set-up count), pytest's time."""
    tests = 0
    failed: dict[str, str] = {}
    root = ET.parse(path).getroot()
    seconds = sum(float(suite.get("time", 0)) for suite in root.iter("testsuite"))
    for case in root.iter("testcase"):
        tests += 1
        for outcome in ("failure", "error"):
            found = case.find(outcome)
            if found is not None:
                test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
                message = (found.get("message") or found.text or outcome).strip()
                failed[test_id] = message.splitlines()[0][:160] if message else outcome
                break
    return RunResult(run, tests, failed, seconds)


def report(results: list[RunResult]) -> str:
    lines = [f"{len(results)} runs of the suite:"]
    for result in results:
        lines.append(
            f"  run {result.run}: {result.tests} tests, {len(result.failed)} failed, "
            f"{result.seconds / 60:.1f} min"
        )
    failures: dict[str, list[int]] = defaultdict(list)
    messages: dict[str, str] = {}
    for result in results:
        for test_id, message in result.failed.items():
            failures[test_id].append(result.run)
            messages.setdefault(test_id, message)
    if not failures:
        lines.append("no test failed in any run")
        return "\n".join(lines)
    lines.append(f"{len(failures)} tests failed at least once:")
    for test_id, runs in sorted(failures.items(), key=lambda item: (-len(item[1]), item[0])):
        which = ", ".join(str(run) for run in runs)
        lines.append(
            f"  {test_id}: failed in {len(runs)} of {len(results)} (run {which}): {messages[test_id]}"
        )
    return "\n".join(lines)


def report_only(out: Path) -> int:
    runs = sorted(out.glob("run-*.xml"), key=lambda path: int(path.stem.removeprefix("run-")))
    if not runs:
        print(f"no runs in {out}", file=sys.stderr)
        return 1
    results = [read_junit(path, int(path.stem.removeprefix("run-"))) for path in runs]
    print(report(results))
    return 1 if any(result.failed for result in results) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.repeat_suite", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="how many runs in a row (default 5)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "out" / "repeat", help="JUnit XML per run"
    )
    parser.add_argument("--report", action="store_true", help="only report the runs already in --out")
    parser.add_argument(
        "pytest_args", nargs="*", help="passed to pytest (after --); default: the whole suite"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.report:
        return report_only(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for run in range(1, args.runs + 1):
        junit = args.out / f"run-{run}.xml"
        junit.unlink(missing_ok=True)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        subprocess.run([*command, *args.pytest_args], check=False)
        if not junit.exists():
            print(f"run {run}: pytest wrote no results ({junit})", file=sys.stderr)
            return 1
        results.append(read_junit(junit, run))
        print(f"run {run} of {args.runs}: {len(results[-1].failed)} failed", flush=True)
    print(report(results))
    return 1 if any(result.failed for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
