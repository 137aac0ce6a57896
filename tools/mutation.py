"""Mutation testing of the modules where a silent bug costs most, with a score per module.

    python -m tools.mutation            # run mutmut (config: [tool.mutmut] in pyproject.toml), then report
    python -m tools.mutation --report   # report the last run again

mutmut copies the project to ./mutants, makes every small change it knows to the modules in
`only_mutate` (one at a time, behind a switch), and runs the tests that reach each changed function:
a mutant the tests do not notice "survived". Survivors are either killed by a new test or listed in
tools/mutation-equivalent.txt with the reason they cannot change behaviour; this report counts both.
Too slow for every CI run (minutes per module on 2 cores): run it when one of these modules or its
tests change, and before a release.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tools" / "mutation-equivalent.txt"
RESULT = re.compile(r"^\s*(?P<name>\S+): (?P<status>.+)$")


def mutmut(*args: str, capture: bool = False) -> str:
    env = {**os.environ, "CLASSIFIER_TEST_SHARED": str(ROOT.parent / "shared")}
    command = [sys.executable, "-m", "mutmut", *args]
    if not capture:
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        return ""
    return subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout


def equivalent_mutants() -> dict[str, str]:
    """Mutant name -> why it cannot change behaviour (lines `name  reason`, # comments)."""
    reasons: dict[str, str] = {}
    for line in EQUIVALENT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            reasons[name] = reason.strip()
    return reasons


def module_of(mutant: str) -> str:
    """service.wasm.memory.xǁGuestMemoryǁview__mutmut_2 -> service/wasm/memory.py"""
    head = mutant.split(".x", 1)[0] if ".x" in mutant else mutant.rsplit(".", 1)[0]
    return head.replace(".", "/") + ".py"


def summarize(results: str, equivalent: dict[str, str]) -> tuple[dict[str, Counter[str]], list[str]]:
    """`mutmut results --all true` -> counts by module and status, and the unexplained survivors."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    unexplained: list[str] = []
    for line in results.splitlines():
        match = RESULT.match(line)
        if not match:
            continue
        name, status = match["name"], match["status"].strip()
        if status == "survived" and name in equivalent:
            status = "equivalent"
        elif status == "survived":
            unexplained.append(name)
        counts[module_of(name)][status] += 1
    return counts, unexplained


def table(counts: dict[str, Counter[str]]) -> list[str]:
    """One line per module; the score leaves out the equivalent mutants and those not run (mutmut
    forgets every result when `[tool.mutmut]` changes, so a run of some mutants leaves the rest unrun)."""
    columns = ("mutants", "killed", "equiv.", "survived", "other", "not run", "score")
    lines = [f"{'module':30}" + "".join(f" {c:>8}" for c in columns)]
    for module in sorted(counts):
        c = counts[module]
        total = sum(c.values())
        not_run = c["not checked"]
        other = total - c["killed"] - c["equivalent"] - c["survived"] - not_run
        scored = total - c["equivalent"] - not_run
        score = f"{c['killed'] / scored:.1%}" if scored else "-"
        cells = (total, c["killed"], c["equivalent"], c["survived"], other, not_run, score)
        lines.append(f"{module:30}" + "".join(f" {cell:>8}" for cell in cells))
    return lines


def report() -> int:
    counts, unexplained = summarize(mutmut("results", "--all", "true", capture=True), equivalent_mutants())
    print("\n".join(table(counts)))
    for name in unexplained:
        print(f"survived, not explained in {EQUIVALENT.name}: {name}")
    return 1 if unexplained else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutation", description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only report the last run")
    args = parser.parse_args()
    if not args.report:
        mutmut("run")
    return report()


if __name__ == "__main__":
    sys.exit(main())
