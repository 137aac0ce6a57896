"""Replicas on one machine behind real daprds: what docs/deploy.md sizes a cluster from.

    python -m bench.replicas          # N = 1, 2, 3: ~5 min; a table on stdout, bench/out/replicas.json
    python -m bench.replicas --smoke  # CI: N = 1, 2 with a few requests and events; judges nothing

For each N, one Redis, N pairs of daprd + `classifier serve` (one app id, one worker each, the
project's components; tests/real_dapr.py's harness) and a caller daprd of another app id:

  backlog      EVENTS events published on `images` while no replica has a model (daprd holds them),
               then the model uploaded: time until every event has its result on
               `classifications`, events lost (must be 0) and duplicated, the share each replica took
  invocation   CLIENTS threads calling `classify` through the caller's daprd (sidecar to sidecar,
               as across pods): requests/s, p50/p99, the share each replica served
  rollout      (N >= 2) under invocation load and a stream of events, each replica replaced as a
               rolling update does (a new one ready first, then SIGTERM to the old app and its
               daprd together, daprd with the manifests' block-shutdown): calls that failed once
               (a retry policy absorbs them) and calls that failed three times, events lost

Per-replica counts come from each daprd's metrics. On 2 cores more replicas cannot add
throughput: the figures show what a replica costs, not a speed-up.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dapr.clients import DaprClient

from service.stores.dapr import DaprStore

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BIRDS = SHARED / "models" / "aiy_birds_v1"
BIRD_JPG = SHARED / "images" / "classify" / "bird.jpg"
EXPECTED_TOP1 = "Aix galericulata"
# As deploy/kubernetes/base/deployment.yaml (dapr.io/block-shutdown-duration, graceful-shutdown-seconds).
DAPRD_SHUTDOWN_ARGS = ("--dapr-block-shutdown-duration", "15s", "--dapr-graceful-shutdown-seconds", "10")
ATTEMPTS = 3  # a caller's retry policy: this many tries, RETRY_PAUSE_S apart
RETRY_PAUSE_S = 0.5


def _harness() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import real_dapr

    return real_dapr


def metric(daprd: Any, name: str, **labels: str) -> float:
    """The sum of a daprd metric over the series whose labels include `labels`."""
    total = 0.0
    for line in daprd.metrics().splitlines():
        if line.startswith(name + "{"):
            series, value = line.rsplit(" ", 1)
            found = dict(re.findall(r'(\w+)="([^"]*)"', series))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(value)
    return total


def results(redis: Any) -> tuple[Counter[str], int]:
    """Results per event id on `classifications`, and how many had another top-1 than expected."""
    seen: Counter[str] = Counter()
    wrong = 0
    for _, fields in redis.xrange("classifications"):
        data = json.loads(fields[b"data"])["data"]
        seen[data.get("correlation_id")] += 1
        wrong += data["predictions"][0]["label"] != EXPECTED_TOP1
    return seen, wrong


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


class Caller:
    """`classify` through the caller's daprd, one kept-alive HTTP connection per thread."""

    def __init__(self, daprd: Any) -> None:
        self.daprd = daprd
        self.image = BIRD_JPG.read_bytes()
        self._local = threading.local()
        self.errors: Counter[str] = Counter()  # what failed attempts got, shortened
        self._lock = threading.Lock()

    def _failed(self, what: str) -> bool:
        with self._lock:
            self.errors[re.sub(r"\d+", "N", what)[:160]] += 1
        return False

    def call_once(self) -> bool:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection(
                "127.0.0.1", self.daprd.http_port, timeout=60
            )
        try:
            connection.request(
                "POST",
                "/v1.0/invoke/image-classifier/method/classify?model=birds&top_k=1",
                body=self.image,
                headers={"Content-Type": "application/octet-stream"},
            )
            answer = connection.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self._local.connection = None
            return self._failed(type(exc).__name__)
        if answer.status != 200:
            return self._failed(f"{answer.status} {body.decode(errors='replace')}")
        return json.loads(body)["predictions"][0]["label"] == EXPECTED_TOP1 or self._failed("wrong top-1")

    def call(self) -> tuple[float, int]:
        """(seconds, failed attempts before the one that succeeded, or ATTEMPTS if none did)."""
        started = time.perf_counter()
        for attempt in range(ATTEMPTS):
            if self.call_once():
                return time.perf_counter() - started, attempt
            time.sleep(RETRY_PAUSE_S)
        return time.perf_counter() - started, ATTEMPTS


def event_body() -> bytes:
    return json.dumps(
        {"image_base64": base64.b64encode(BIRD_JPG.read_bytes()).decode(), "model": "birds"}
    ).encode()


def publish(caller: Any, ids: list[str], body: bytes, pause_s: float = 0.0) -> None:
    for event_id in ids:
        answer = caller.publish("images", body, "application/json", metadata={"cloudevent.id": event_id})
        if answer.status != 204:
            raise RuntimeError(f"publish {event_id}: {answer.status} {answer.body[:200]!r}")
        if pause_s:
            time.sleep(pause_s)


def invoke_load(caller: Caller, clients: int, requests: int) -> dict[str, Any]:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    per_client = max(1, requests // clients)

    def client() -> None:
        for _ in range(per_client):
            seconds, failed = caller.call()
            with lock:
                latencies.append(seconds)
                failures[0] += failed == ATTEMPTS

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "failed": failures[0],
        "req_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


def stop_together(daprd: Any, app: Any, timeout: float = 40.0) -> tuple[int | None, int | None]:
    """SIGTERM to the app and its daprd at once, as Kubernetes stops a pod's containers."""
    for process in (app.process, daprd.process):
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
    codes = []
    for process in (app.process, daprd.process):
        try:
            codes.append(process.wait(timeout))
        except Exception:
            process.kill()
            codes.append(process.wait())
    return codes[0], codes[1]


def run(
    replicas: int, work: Path, *, events: int, requests: int, clients: int, rollout_s: float
) -> dict[str, Any]:
    harness = _harness()
    out: dict[str, Any] = {"replicas": replicas}
    with harness.stack(work, replicas=0) as s:
        for _ in range(replicas):
            s.add_replica(daprd_args=DAPRD_SHUTDOWN_ARGS, CLASSIFIER_WORKERS="1")
        caller_daprd = s.add_sidecar("caller")
        redis = s.redis.client()
        body = event_body()

        # Backlog: the events wait in the stream until a replica has a model.
        publish(caller_daprd, [f"backlog-{i}" for i in range(events)], body)
        out["backlog_xlen"] = int(redis.xlen("images"))
        started = time.monotonic()
        with harness.sidecar_env(caller_daprd), DaprClient() as client:
            labels = (BIRDS / "labels.txt").read_text().splitlines()
            DaprStore(client, work / "uploader").put("birds", (BIRDS / "model.tflite").read_bytes(), labels)
        timeline: list[tuple[float, int]] = []  # (seconds since the upload, results so far) at each change

        def drained() -> bool:
            done = len(results(redis)[0])
            if not timeline or timeline[-1][1] != done:
                timeline.append((round(time.monotonic() - started, 1), done))
            return done >= events

        harness.wait_for(drained, 600, "every backlog event answered", interval=0.2)
        drain_s = time.monotonic() - started
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(timeline[1:])]
        seen, wrong = results(redis)
        out["backlog"] = {
            "events": events,
            "drain_s": round(drain_s, 1),
            "events_per_s": round(events / drain_s, 1),
            "lost": events - len(seen),
            "duplicates": sum(n - 1 for n in seen.values()),
            "wrong_top1": wrong,
            "first_result_s": timeline[1][0] if len(timeline) > 1 else None,
            "longest_gap_s": round(max(gaps, default=0.0), 1),  # without a new result: a stall shows here
            "per_replica": [
                int(metric(d, "dapr_component_pubsub_ingress_count", topic="images")) for d, _ in s.replicas
            ],
        }
        for _, app in s.replicas:
            app.wait_ready()

        caller = Caller(caller_daprd)
        invoke_load(caller, clients, clients * 3)  # warm connections and interpreters
        before = [
            metric(d, "dapr_runtime_service_invocation_req_recv_total", src_app_id="caller")
            for d, _ in s.replicas
        ]
        out["invocation"] = invoke_load(caller, clients, requests)
        after = [
            metric(d, "dapr_runtime_service_invocation_req_recv_total", src_app_id="caller")
            for d, _ in s.replicas
        ]
        out["invocation"]["per_replica"] = [int(a - b) for a, b in zip(after, before, strict=True)]
        out["rss_mib"] = {
            "apps": [round(_rss_mib(a.process.pid), 1) for _, a in s.replicas],
            "daprds": [round(_rss_mib(d.process.pid), 1) for d, _ in s.replicas],
        }

        if replicas >= 2:
            out["rollout"] = rollout(s, caller, caller_daprd, redis, body, rollout_s)
    return out


def rollout(
    s: Any, caller: Caller, caller_daprd: Any, redis: Any, body: bytes, seconds: float
) -> dict[str, Any]:
    harness = _harness()
    stop = threading.Event()
    outcomes: list[int] = []  # failed attempts per call
    lock = threading.Lock()

    def load() -> None:
        while not stop.is_set():
            _, failed = caller.call()
            with lock:
                outcomes.append(failed)

    stream_ids = [f"rollout-{i}" for i in range(int(seconds * 10))]
    caller.errors.clear()
    publisher = threading.Thread(target=publish, args=(caller_daprd, stream_ids, body, 0.1))
    loaders = [threading.Thread(target=load) for _ in range(2)]
    for thread in [publisher, *loaders]:
        thread.start()
    exit_codes = []
    started = time.monotonic()
    try:
        for old in list(s.replicas):
            _, app = s.add_replica(daprd_args=DAPRD_SHUTDOWN_ARGS, CLASSIFIER_WORKERS="1")
            app.wait_ready(timeout=120)
            exit_codes.append(stop_together(*old))
            s.replicas.remove(old)
    finally:
        publisher.join()
        stop.set()
        for thread in loaders:
            thread.join()
    rollout_s = time.monotonic() - started
    harness.wait_for(
        lambda: set(stream_ids) <= set(results(redis)[0]), 300, "every rollout event answered", interval=0.5
    )
    seen, _ = results(redis)
    return {
        "rollout_s": round(rollout_s, 1),
        "calls": len(outcomes),
        "failed_once_then_ok": sum(1 <= n < ATTEMPTS for n in outcomes),
        "failed_all_attempts": sum(n == ATTEMPTS for n in outcomes),
        "events": len(stream_ids),
        "events_lost": sum(seen[i] == 0 for i in stream_ids),
        "events_duplicated": sum(max(0, seen[i] - 1) for i in stream_ids),
        "exit_codes_app_daprd": exit_codes,
        "errors": dict(caller.errors),
    }


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| N | backlog drain s | events/s | lost | dup | events per replica | invoke req/s | p50 ms | p99 ms "
        "| calls per replica | app RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        b, i = r["backlog"], r["invocation"]
        lines.append(
            f"| {r['replicas']} | {b['drain_s']} | {b['events_per_s']} | {b['lost']} | {b['duplicates']} "
            f"| {b['per_replica']} | {i['req_per_s']} | {i['p50_ms']} | {i['p99_ms']} | {i['per_replica']} "
            f"| {r['rss_mib']['apps']} |"
        )
    for r in runs:
        if "rollout" in r:
            o = r["rollout"]
            calls = (
                f"{o['calls']} calls, {o['failed_once_then_ok']} failed then succeeded on a retry, "
                f"{o['failed_all_attempts']} failed {ATTEMPTS} times"
            )
            events = f"{o['events']} events, lost {o['events_lost']}, duplicated {o['events_duplicated']}"
            codes = f"exit codes (app, daprd) {o['exit_codes_app_daprd']}"
            lines.append(f"\nrollout N={r['replicas']}: {o['rollout_s']} s; {calls}; {events}; {codes}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="N = 1, 2 with a few requests: checks it works")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    counts, events, requests, rollout_s = (
        ((1, 2), 20, 20, 3.0) if args.smoke else ((1, 2, 3), 1000, 400, 20.0)
    )
    runs = []
    load = os.getloadavg()[0]
    # The stacks' logs (daprd, serve) stay in OUT/replicas-work until the next run.
    work = args.out / "replicas-work"
    shutil.rmtree(work, ignore_errors=True)
    for n in counts:
        runs.append(run(n, work / f"n{n}", events=events, requests=requests, clients=2, rollout_s=rollout_s))
        print(f"N={n}: {json.dumps(runs[-1])}", flush=True)
    report = {"smoke": args.smoke, "cores": os.cpu_count(), "load_at_start": load, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replicas.json").write_text(json.dumps(report, indent=2))
    print(("smoke run (judges nothing)\n" if args.smoke else "") + table(runs))
    failures = [
        r["replicas"]
        for r in runs
        if r["backlog"]["lost"] or r["invocation"]["failed"] or r.get("rollout", {}).get("events_lost")
    ]
    if failures:
        print(f"events lost or calls failed with N = {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
