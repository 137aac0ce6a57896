"""`python -m bench.ab`, `bench.pooling` and `bench.cpu` run and print what docs/performance.md
says they print (one short round each; the figures measure nothing)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import ROOT

TIMEOUT_S = 600


def run_module(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bench_ab_compares_two_settings_on_every_workload() -> None:
    out = run_module(
        "bench.ab",
        "CLASSIFIER_SOLO_INTERPRETER_THREADS=1",
        "CLASSIFIER_SOLO_INTERPRETER_THREADS=2",
        "--rounds",
        "1",
        "--per-round",
        "2",
    )
    assert out.count("B / A: p50 ") == 2, out
    assert "aiy_birds_v1 + bird.jpg" in out and "mobilenet_v2_1.0_224_quant + grace_hopper.jpg" in out
    assert "A {'CLASSIFIER_SOLO_INTERPRETER_THREADS': '1'}" in out


def test_bench_pooling_reports_both_allocators() -> None:
    out = run_module("bench.pooling", "--rounds", "1")
    lines = out.splitlines()
    assert [line.split(" wasm overhead")[0].strip() for line in lines] == [
        "default allocator",
        "pooling, 4 MiB resident",
    ], out
    assert all("minor page faults p50" in line for line in lines)


def test_bench_ab_refuses_a_setting_that_is_not_var_equals_value() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.ab", "WORKERS", "CLASSIFIER_WORKERS=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith("'WORKERS': give VAR=VALUE[,VAR=VALUE...]")


def test_bench_cpu_measures_cpu_per_request_of_the_service_and_the_peer() -> None:
    args = ["bench.cpu", "--smoke", "--clients", "2"] + (["--perf"] if shutil.which("perf") else [])
    out = run_module(*args)
    for workload in ("aiy_birds_v1 + bird.jpg", "mobilenet_v2_1.0_224_quant + grace_hopper.jpg"):
        section = out[out.index(f"{workload}, 2 clients") :].splitlines()
        cpu = {line.split()[0]: float(line.split()[1]) for line in section[1:3]}
        assert set(cpu) == {"service", "peer"} and all(ms > 0 for ms in cpu.values()), section
        assert section[3] == f"  service - peer: {cpu['service'] - cpu['peer']:+.2f} ms CPU/request"
        if "--perf" in args:
            # Both processes run LiteRT for every request: perf must have seen it in both.
            litert = next(line for line in section if line.strip().startswith("LiteRT"))
            mine, _, theirs = litert.split()[1:4]
            assert float(mine) > 0 and float(theirs) > 0, litert
