"""Where the service's CPU goes, per request, next to the peer's: the throughput gap explained.

    python -m bench.cpu                 # ~2 min: CPU per request of the service and the peer, c=4
    python -m bench.cpu --perf          # and by library (perf record on each process, perf report)
    python -m bench.cpu --smoke         # a few requests (CI): checks it works, measures nothing

Under load, throughput on a fixed number of cores is cores / CPU per request: what the service
spends per request beyond the peer (bench/peer.py, the plain SDK app calling LiteRT) is the
price of the sandbox in throughput. This measures it from the kernel's own accounting (the
process's user + system time over a burst of requests, every thread counted), the two processes
taking turns round by round, plus the voluntary context switches per request. With `--perf`, each
process's CPU is split by the shared library it ran in (LiteRT, libjpeg, Pillow, the Python
interpreter, wasmtime, the kernel), from `perf record -F 999` over one burst of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from service.stores.local import LocalStore

from .run import SMOKE_NOTE, WORKLOADS, PeerClient, ServiceClient, concurrent, positive_int

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system time of every thread of `pid` so far (/proc/PID/stat, fields 14-15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of every live thread of `pid` (a thread that blocked to wait)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def burst(pid: int, call: Callable[[], object], clients: int, per_client: int) -> tuple[float, float, float]:
    """CPU ms per request, switches per request, requests/s of one burst of `clients` threads."""
    cpu, switches = process_cpu_s(pid), voluntary_switches(pid)
    latencies, rate = concurrent(call, clients, per_client)
    count = len(latencies)
    return (
        (process_cpu_s(pid) - cpu) * 1000 / count,
        (voluntary_switches(pid) - switches) / count,
        rate,
    )


# perf's burst is at least this many requests per client. The smoke run's 2 lasted ~50 ms, and
# twice perf saw no LiteRT in the service at all (likely still attaching to its threads); a
# longer burst makes a late attach harmless.
PERF_MIN_PER_CLIENT = 10


def perf_by_library(
    pid: int, call: Callable[[], object], clients: int, per_client: int, data: Path
) -> dict[str, float]:
    """CPU ms per request by shared library, from perf's samples of one burst."""
    record = subprocess.Popen(
        ["perf", "record", "-q", "-F", "999", "-p", str(pid), "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # perf attaches to every thread
    latencies, _ = concurrent(call, clients, per_client)
    record.send_signal(signal.SIGINT)
    record.wait(timeout=60)
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "-g", "none", "--stdio", "-F", "period,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    by_library: dict[str, float] = {}
    for line in report.splitlines():
        if line.strip() and not line.startswith("#"):
            period, library = line.split(maxsplit=1)
            # cpu-clock's period is in nanoseconds of CPU
            by_library[library.strip()] = int(period) / 1e6 / len(latencies)
    return by_library


def caller(invoke: Callable[[bytes, str], object], image: bytes, model: str) -> Callable[[], object]:
    return lambda: invoke(image, model)


def library_group(library: str) -> str:
    """A library's name without its build hash, grouped as docs/performance.md names them."""
    for prefix, group in (
        ("libpywrap_litert", "LiteRT"),
        ("libjpeg", "libjpeg"),
        ("_imaging", "Pillow"),
        ("libpython", "Python"),
        ("[kernel", "kernel"),
        ("libc.so", "libc"),
        ("_libwasmtime", "wasmtime"),
        ("[JIT]", "guest code"),
        ("cygrpc", "grpc"),
    ):
        if library.startswith(prefix):
            return group
    return "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=positive_int, default=4, help="client threads (default 4)")
    parser.add_argument("--rounds", type=positive_int, default=6)
    parser.add_argument("--per-round", type=positive_int, default=25, help="requests per client per round")
    parser.add_argument("--perf", action="store_true", help="also split the CPU by library with perf")
    parser.add_argument("--smoke", action="store_true", help="a few requests: checks it works")
    args = parser.parse_args(argv)
    if args.perf and shutil.which("perf") is None:
        parser.error("--perf needs perf (Debian: linux-perf)")
    rounds, per_round = (1, 2) if args.smoke else (args.rounds, args.per_round)
    work = Path(tempfile.mkdtemp(prefix="classifier-cpu-"))
    store = LocalStore(work / "store")
    for workload in WORKLOADS:
        store.put(workload.name, workload.model.read_bytes())
    service: ServiceClient | None = None
    peer: PeerClient | None = None
    try:
        service = ServiceClient(work / "store", work / "cache")
        service.wait_healthy()
        peer = PeerClient()
        if args.smoke:
            print(SMOKE_NOTE)
        for workload in WORKLOADS:
            image = workload.image.read_bytes()
            sides: dict[str, tuple[int, Callable[[], object]]] = {
                "service": (service.server.pid, caller(service.invoke, image, workload.name)),
                "peer": (peer.server.pid, caller(peer.invoke, image, workload.name)),
            }
            for _, call in sides.values():
                for _ in range(5):
                    call()
            figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
            for round_number in range(rounds):
                for name, (pid, call) in list(sides.items())[:: 1 if round_number % 2 == 0 else -1]:
                    figures[name].append(burst(pid, call, args.clients, per_round))
            print(f"\n{workload.label}, {args.clients} clients, {rounds} rounds (medians)")
            medians = {
                name: [statistics.median(row[i] for row in rows) for i in range(3)]
                for name, rows in figures.items()
            }
            for name, (cpu_ms, switches, rate) in medians.items():
                print(f"  {name:8} {cpu_ms:6.2f} ms CPU  {switches:5.1f} switches  {rate:6.1f} req/s")
            print(f"  service - peer: {medians['service'][0] - medians['peer'][0]:+.2f} ms CPU/request")
            if args.perf:
                split: dict[str, dict[str, float]] = {}
                for name, (pid, call) in sides.items():
                    grouped: dict[str, float] = {}
                    for library, ms in perf_by_library(
                        pid, call, args.clients, max(per_round, PERF_MIN_PER_CLIENT), work / f"{name}.data"
                    ).items():
                        grouped[library_group(library)] = grouped.get(library_group(library), 0.0) + ms
                    split[name] = grouped
                groups = sorted(
                    set(split["service"]) | set(split["peer"]), key=lambda g: -split["service"].get(g, 0)
                )
                print("  by library, ms CPU/request: service / peer (difference)")
                for group in groups:
                    mine, theirs = split["service"].get(group, 0.0), split["peer"].get(group, 0.0)
                    print(f"    {group:10} {mine:6.2f} / {theirs:6.2f} ({mine - theirs:+.2f})")
    finally:
        if peer is not None:
            peer.close()
        if service is not None:
            service.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
