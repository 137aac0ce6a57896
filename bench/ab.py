"""A/B of two service settings, in one run: two `classifier serve` processes, the cases interleaved.

    python -m bench.ab CLASSIFIER_SOLO_INTERPRETER_THREADS=1 CLASSIFIER_SOLO_INTERPRETER_THREADS=2
    python -m bench.ab A_ENV B_ENV --rounds 10 --per-round 20   # each side: VAR=VALUE[,VAR=VALUE...]

For each workload of `python -m bench`: p50 at c=1, and requests/s and the service process's CPU
per request (user + system of all its threads, from /proc: steadier than requests/s on a noisy
machine) at c=1, 2 and 4 of A and of B, round by round alternating which goes first, and B's
figures as ratios to A's. What a lever changes in a setting (a variable of `classifier serve`) is
measured here against the same machine load; what it changes in code is measured with
`python -m bench` before and after.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from service.stores.local import LocalStore

from .cpu import process_cpu_s
from .run import WORKLOADS, ServiceClient, concurrent, positive_int, timed

LEVELS = (1, 2, 4)


def parse_env(text: str) -> dict[str, str]:
    items = [item for item in text.split(",") if item]
    if not items or not all("=" in item and item.index("=") > 0 for item in items):
        raise argparse.ArgumentTypeError(f"{text!r}: give VAR=VALUE[,VAR=VALUE...]")
    return dict(item.split("=", 1) for item in items)


def ratio(b: list[float], a: list[float]) -> str:
    """B's median over A's; "n/a" when A's is 0 (CPU counted in 10 ms ticks, a short burst may show none)."""
    below = statistics.median(a)
    return f"{statistics.median(b) / below:.3f}" if below else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=parse_env)
    parser.add_argument("b", type=parse_env)
    parser.add_argument("--rounds", type=positive_int, default=10)
    parser.add_argument("--per-round", type=positive_int, default=20)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="classifier-ab-"))
    store = LocalStore(work / "store")
    for workload in WORKLOADS:
        store.put(workload.name, workload.model.read_bytes())
    sides = {"A": args.a, "B": args.b}
    services: dict[str, ServiceClient] = {}
    try:
        for name, env in sides.items():
            services[name] = ServiceClient(work / "store", work / f"cache-{name}", env=env)
        for service in services.values():
            service.wait_healthy()
        for workload in WORKLOADS:
            image = workload.image.read_bytes()
            latencies: dict[str, list[float]] = defaultdict(list)
            rates: dict[str, list[float]] = defaultdict(list)
            cpu_ms: dict[str, list[float]] = defaultdict(list)  # per request
            for service in services.values():
                for _ in range(5):
                    service.invoke(image, workload.name)
            for round_number in range(args.rounds):
                order = list(services.items())[:: 1 if round_number % 2 == 0 else -1]
                for name, service in order:

                    def call(
                        service: ServiceClient = service, image: bytes = image, model: str = workload.name
                    ) -> object:
                        return service.invoke(image, model)

                    pid = service.server.pid
                    cpu = process_cpu_s(pid)
                    sequential = [timed(call) for _ in range(args.per_round)]
                    cpu_ms[f"{name} c=1"].append((process_cpu_s(pid) - cpu) * 1000 / len(sequential))
                    latencies[name] += sequential
                    rates[f"{name} c=1"].append(len(sequential) / sum(sequential))
                    for clients in LEVELS[1:]:
                        cpu = process_cpu_s(pid)
                        done, rate = concurrent(call, clients, args.per_round)
                        cpu_ms[f"{name} c={clients}"].append((process_cpu_s(pid) - cpu) * 1000 / len(done))
                        rates[f"{name} c={clients}"].append(rate)
            print(f"\n{workload.label}")
            for name in services:
                p50 = statistics.median(latencies[name]) * 1000
                levels = ", ".join(f"c={c} {statistics.median(rates[f'{name} c={c}']):.1f}" for c in LEVELS)
                cpu = ", ".join(f"c={c} {statistics.median(cpu_ms[f'{name} c={c}']):.2f}" for c in LEVELS)
                print(f"  {name} {sides[name]}: p50 {p50:.2f} ms; req/s {levels}; CPU ms/request {cpu}")
            ratio_p50 = statistics.median(latencies["B"]) / statistics.median(latencies["A"])
            ratios = ", ".join(f"c={c} {ratio(rates[f'B c={c}'], rates[f'A c={c}'])}" for c in LEVELS)
            cpu_ratios = ", ".join(f"c={c} {ratio(cpu_ms[f'B c={c}'], cpu_ms[f'A c={c}'])}" for c in LEVELS)
            print(f"  B / A: p50 {ratio_p50:.3f}; req/s {ratios}; CPU ms/request {cpu_ratios}")
    finally:
        for service in services.values():
            service.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
