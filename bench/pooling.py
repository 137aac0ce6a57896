"""A/B of wasmtime's pooling allocator (memory kept resident) against the default one.

    python -m bench.pooling                    # keep 4 MiB of each slot's memory resident
    python -m bench.pooling --keep-mib 1 --rounds 20

Two Classifiers in one process, the default guest on aiy_birds_v1 + bird.jpg, taking turns
ten runs at a time: per run the wasm overhead (host timings, as `python -m bench`), the thread's
CPU time for the whole run and its minor page faults (getrusage(RUSAGE_THREAD): wasmtime runs
the guest on the calling thread). Page faults are exact where timings drown in the noise. Not
used by the service (docs/performance.md says why); every run still gets a fresh instance.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import wasmtime
from wasmtime import _bindings

import service.wasm.host
from service.config import Settings
from service.pipeline import Classifier
from service.stores.local import LocalStore

from .run import WORKLOADS, positive_int, wasm_overhead

SLOTS = 64  # instances, memories, tables and stacks the pool reserves
CONFIG = wasmtime.Config  # the host builds its Config through this name: swapped for the pooled one


def pooled_config(keep_resident: int) -> wasmtime.Config:
    config = CONFIG()
    pool = _bindings.wasmtime_pooling_allocation_config_new()
    for setter in ("total_memories", "total_core_instances", "total_tables", "total_stacks"):
        getattr(_bindings, f"wasmtime_pooling_allocation_config_{setter}_set")(pool, SLOTS)
    _bindings.wasmtime_pooling_allocation_config_max_memory_size_set(pool, 256 << 20)
    _bindings.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(pool, keep_resident)
    _bindings.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    _bindings.wasmtime_pooling_allocation_config_delete(pool)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-mib", type=positive_int, default=4)
    parser.add_argument("--rounds", type=positive_int, default=20)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="classifier-pooling-"))
    workload = WORKLOADS[0]
    store = LocalStore(work / "store")
    store.put(workload.name, workload.model.read_bytes())
    image = workload.image.read_bytes()
    default = Classifier(Settings(store_dir=work / "store", cache_dir=work / "default"), store=store)
    service.wasm.host.wasmtime.Config = lambda: pooled_config(args.keep_mib << 20)  # type: ignore[assignment]
    try:
        pooled = Classifier(Settings(store_dir=work / "store", cache_dir=work / "pooled"), store=store)
    finally:
        service.wasm.host.wasmtime.Config = CONFIG  # type: ignore[misc]
    sides = {"default allocator": default, f"pooling, {args.keep_mib} MiB resident": pooled}

    def measured(classifier: Classifier) -> tuple[float, float, int]:
        before, cpu = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time()
        overhead = wasm_overhead(classifier, workload, image, labels=False)
        cpu, after = time.thread_time() - cpu, resource.getrusage(resource.RUSAGE_THREAD)
        return overhead, cpu, after.ru_minflt - before.ru_minflt

    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in sides}
    try:
        for classifier in sides.values():
            for _ in range(10):
                measured(classifier)
        for round_number in range(args.rounds):
            for name, classifier in list(sides.items())[:: 1 if round_number % 2 else -1]:
                samples[name] += [measured(classifier) for _ in range(10)]
        for name, runs in samples.items():
            overhead, cpu, faults = (statistics.median(column) for column in zip(*runs, strict=True))
            print(
                f"{name:<28} wasm overhead p50 {overhead * 1000:.3f} ms, "
                f"CPU per run p50 {cpu * 1000:.3f} ms, minor page faults p50 {faults:.0f}"
            )
        answer = pooled.classify(image, workload.name)["predictions"][0]
        assert answer == default.classify(image, workload.name)["predictions"][0], answer
    finally:
        default.close()
        pooled.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
