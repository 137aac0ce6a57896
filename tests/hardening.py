"""Records what the hardening tests tried and what happened, for docs/hardening.md.

Each hardening test calls `hardening.record(...)` with the case it tried and the outcome
it observed (and asserted). At the end of the session the records are written to
.hardening/results.json; `python -m tests.hardening_report` renders docs/hardening.md from it.

Records hold only deterministic facts (statuses, error codes, messages), so a full run
always renders the same table and CI can check the committed document is current.
Timings and memory figures go to `measure(...)`, rendered in a section that is not checked.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / ".hardening" / "results.json"  # not build/: ruff takes that for wasm/build.py

# Sections in the order the document shows them.
SECTIONS = (
    "guest limits",
    "sandbox",
    "inputs: invoke",
    "inputs: pub/sub",
    "properties",
    "store faults",
    "load",
)

MAX_MESSAGE = 220


@dataclass(frozen=True)
class Record:
    section: str
    case: str
    tried: str  # what was sent or done
    outcome: str  # gRPC status of the call, or the pub/sub delivery status
    error: str  # the JSON error body's code: message, or "" when there was none
    healthy_after: bool  # health check passed and normal requests succeeded afterwards


class HardeningLog:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], Record] = {}
        self.measurements: dict[str, Any] = {}
        self._lock = threading.Lock()

    def record(
        self, section: str, case: str, tried: str, outcome: str, error: str = "", healthy_after: bool = True
    ) -> None:
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}")
        # Every case expects the service to keep serving: a record is also the assertion, so a result that
        # only the generated document would show can never pass unnoticed.
        assert healthy_after, f"{section}: {case}: not healthy afterwards ({outcome}; {error})"
        error = " ".join(error.split())
        if len(error) > MAX_MESSAGE:
            error = error[: MAX_MESSAGE - 1] + "…"
        with self._lock:
            self.records[(section, case)] = Record(section, case, tried, outcome, error, healthy_after)

    def measure(self, name: str, value: Any) -> None:
        with self._lock:
            self.measurements[name] = value

    def save(self, path: Path) -> None:
        ordered = sorted(self.records.values(), key=lambda r: (SECTIONS.index(r.section), r.case))
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"records": [asdict(r) for r in ordered], "measurements": self.measurements}
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


_log = HardeningLog()


@pytest.fixture(scope="session")
def hardening() -> HardeningLog:
    return _log


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _log.records or _log.measurements:
        _log.save(RESULTS)
