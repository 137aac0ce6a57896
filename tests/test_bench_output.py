"""What the benchmark and the profile print, from recorded results (no benchmark is run): a
smoke run says it is one and judges no target; no cost is printed negative."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))  # bench/ is not part of the installed package
from bench.profile import print_profile
from bench.run import print_table


def table_results(smoke: bool) -> dict:
    case = {"p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "requests_per_s": 10.0, "ratio_p50_to_native": 1.5}
    return {
        "smoke": smoke,
        "workloads": {
            "birds": {
                "cases": {"native": case},
                "sidecar_hop_ms": {"http": {"p50_ms": -0.4, "p99_ms": 1.25}},
                "wasm_overhead_ms": {"p50": 3.0, "p90": 4.0},
            }
        },
        "cold_start": {"warm cache": {"healthy_s": 0.5, "first_response_s": 0.7, "rss_mib": 100}},
        "targets": [
            {"workload": "birds", "target": "x", "value": 2.0, "limit": "<= 1.0", "met": False},
            {"workload": "birds", "target": "y", "value": 0.5, "limit": "<= 1.0", "met": True},
        ],
    }


def test_a_smoke_benchmark_says_so_and_judges_no_target(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(table_results(smoke=True))
    out = capsys.readouterr().out
    assert out.startswith("smoke run: ") and "measure nothing" in out
    assert "NOT met" not in out and " met" not in out and "targets: not judged in a smoke run" in out
    assert "-0.4" not in out and "below the noise" in out and "+1.25 ms" in out


def test_a_full_benchmark_judges_its_targets(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(table_results(smoke=False))
    out = capsys.readouterr().out
    assert "smoke" not in out and "NOT met" in out and out.rstrip().endswith("met")


@pytest.mark.parametrize("smoke", [True, False])
def test_the_profile_prints_no_negative_cost(capsys: pytest.CaptureFixture[str], smoke: bool) -> None:
    print_profile(
        {
            "smoke": smoke,
            "image_bytes": 100,
            "floor_ms": 0.5,
            "floor_phases_ms": {"instantiate": -0.01, "_start": 0.2},
            "operation_ms": {"read stdin": -0.003, "one stdout write": 0.002},
            "default_guest_overhead_ms": {"default guest, with labels": 3.0},
            "grpc_floor_ms": {"OnInvoke": 1.4},
        }
    )
    out = capsys.readouterr().out
    assert out.startswith("smoke run: ") == smoke
    assert "-0." not in out and out.count("below the noise") == 2 and "0.002 ms" in out
