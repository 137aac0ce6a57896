"""tools/mutation.py's report: scores per module from mutmut's result lines, equivalents apart."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from tools.mutation import equivalent_mutants, module_of, summarize, table

RESULTS = """
    service.wasm.memory.xǁGuestMemoryǁview__mutmut_1: killed
    service.wasm.memory.xǁGuestMemoryǁwrite__mutmut_3: survived
    service.wasm.memory.xǁGuestMemoryǁwrite__mutmut_4: survived
    service.edge.calls.x_error_reason__mutmut_2: killed
    service.edge.calls.x__querystring__mutmut_1: timeout
    service.edge.calls.x__querystring__mutmut_2: not checked
    service.stores.local.xǁLocalStoreǁput__mutmut_1: not checked
"""


def test_module_of_a_mutant_name() -> None:
    assert module_of("service.wasm.memory.xǁGuestMemoryǁview__mutmut_2") == "service/wasm/memory.py"
    assert module_of("service.edge.calls.x_error_reason__mutmut_2") == "service/edge/calls.py"


def test_survivors_are_equivalent_only_when_listed_with_a_reason() -> None:
    counts, unexplained = summarize(RESULTS, {"service.wasm.memory.xǁGuestMemoryǁwrite__mutmut_3": "why"})
    assert dict(counts["service/wasm/memory.py"]) == {"killed": 1, "equivalent": 1, "survived": 1}
    assert dict(counts["service/edge/calls.py"]) == {"killed": 1, "timeout": 1, "not checked": 1}
    assert unexplained == ["service.wasm.memory.xǁGuestMemoryǁwrite__mutmut_4"]
    lines = table(counts)
    assert lines[0].split()[-3:] == ["not", "run", "score"]
    # not run: out of the score, as the equivalent ones
    assert lines[1].split() == ["service/edge/calls.py", "3", "1", "0", "0", "1", "1", "50.0%"]
    assert lines[2].split() == ["service/stores/local.py", "1", "0", "0", "0", "0", "1", "-"]
    assert lines[3].split() == ["service/wasm/memory.py", "3", "1", "1", "1", "0", "0", "50.0%"]


def test_every_listed_equivalent_has_a_reason() -> None:
    listed = equivalent_mutants()
    assert listed and all(reason for reason in listed.values())
    assert all(name.startswith("service.") and "__mutmut_" in name for name in listed)
