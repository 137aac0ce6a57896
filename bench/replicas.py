"""Replicas on one machine behind real daprds: what docs/deploy.md sizes a cluster from.

    python -m bench.replicas          # N = 1, 2, 3: ~5 min; a table on stdout, bench/out/replicas.json
    python -m bench.replicas --smoke  # CI: N = 1, 2 with a few requests and events; judges nothing

For each N, one Redis, N pairs of daprd + `classifier serve` (one app id, one worker each, the
project's components; tests/real_dapr.py's harness) and a caller daprd of another app id, which
resolves the replicas through Endpoints: listed while ready, unlisted when terminating, as a
Service's endpoints are (`--readiness daprd`: ready as daprd alone is, without the app's probe):

  backlog      EVENTS events published on `images` while no replica has a model (daprd holds them),
               then the model uploaded: time until every event has its result on
               `classifications`, events lost (must be 0) and duplicated, the share each replica took
  invocation   CLIENTS threads calling `classify` through the caller's daprd (sidecar to sidecar,
               as across pods): requests/s, p50/p99, the share each replica served
  rollout      (N >= 2) under invocation load and a stream of events, each replica replaced as a
               rolling update does: a new one ready first, then the old one stopped as the kubelet
               stops a pod (stop_as_kubernetes): calls that failed once (a retry policy absorbs
               them) and calls that failed three times, events lost, duplicated and the slowest

    python -m bench.replicas --rollout 2 --runs 3   # only the rollout, 3 times with N = 2: ~5 min
    python -m bench.replicas --rollout 2 --stop together  # app and daprd SIGTERMed at once, no preStop
    python -m bench.replicas --stall 300    # a replica stopped while 2 drain 300 events: the stall
    python -m bench.replicas --stall 300 --processing-timeout 20s   # the same with a shorter one

Per-replica counts come from each daprd's metrics. On 2 cores more replicas cannot add
throughput: the figures show what a replica costs, not a speed-up.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from dapr.clients import DaprClient

from service.edge.app import GRPC_HEALTH_SERVING
from service.stores.dapr import DaprStore

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BIRDS = SHARED / "models" / "aiy_birds_v1"
BIRD_JPG = SHARED / "images" / "classify" / "bird.jpg"
EXPECTED_TOP1 = "Aix galericulata"
# As deploy/kubernetes/base/deployment.yaml (dapr.io/block-shutdown-duration, graceful-shutdown-seconds).
DAPRD_SHUTDOWN_ARGS = ("--dapr-block-shutdown-duration", "15s", "--dapr-graceful-shutdown-seconds", "10")
PRESTOP_S = 5.0  # the app container's preStop sleep in the same Deployment
PROBE_PERIOD_S = 2.0  # its readinessProbe's periodSeconds (failureThreshold 1)
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
        self.failed_at: list[tuple[float, str]] = []  # (wall-clock time, what) of each failed attempt
        self._lock = threading.Lock()

    def _failed(self, what: str) -> bool:
        with self._lock:
            self.errors[re.sub(r"\d+", "N", what)[:160]] += 1
            self.failed_at.append((time.time(), what[:400]))
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
        publish_one(caller, event_id, body)
        if pause_s:
            time.sleep(pause_s)


def publish_one(caller: Any, event_id: str, body: bytes) -> None:
    answer = caller.publish("images", body, "application/json", metadata={"cloudevent.id": event_id})
    if answer.status != 204:
        raise RuntimeError(f"publish {event_id}: {answer.status} {answer.body[:200]!r}")


def answered_at(redis: Any) -> dict[str, float]:
    """The wall-clock time of each event's first result (its stream entry id's milliseconds)."""
    first: dict[str, float] = {}
    for entry_id, fields in redis.xrange("classifications"):
        event_id = json.loads(fields[b"data"])["data"].get("correlation_id")
        first.setdefault(event_id, int(entry_id.split(b"-")[0]) / 1000)
    return first


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


def stop_together(daprd: Any, app: Any, timeout: float = 40.0) -> dict[str, Any]:
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
    return {"exit_codes_app_daprd": codes}


class Endpoints:
    """The Service endpoints a caller's daprd resolves the app id to, kept as Kubernetes keeps
    them: a replica is listed while it is ready and unlisted the moment it starts terminating.

    The caller's daprd resolves through the stack's sqlite table; each replica's daprd registers
    in a table of its own (its own Configuration), which no caller reads, and this controller
    lists the ready ones in the caller's table (renewing their rows, which the resolver ignores
    once older than its 5 s update interval). Ready is, every PROBE_PERIOD_S, `readiness`:
    "app", the app's grpc.health.v1 (deploy/kubernetes' readinessProbe), or "daprd", daprd's
    /v1.0/healthz (its own readiness probe, which passes once the app's port is open)."""

    def __init__(self, harness: Any, s: Any, readiness: str) -> None:
        self.harness, self.stack, self.readiness = harness, s, readiness
        self.db = s.workdir / "nr.db"  # the stack's Configuration's table: the callers'
        self.members: dict[str, tuple[Any, Any]] = {}  # address -> (daprd, app)
        self.listed: set[str] = set()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._probe_loop, daemon=True)
        self._thread.start()

    def add_replica(self) -> tuple[Any, Any]:
        """A new replica (the manifests' daprd shutdown flags, 1 worker), listed once ready."""
        n = len(list(self.stack.workdir.glob("config-*.yaml")))
        config = self.harness.write_config(
            self.stack.workdir / f"config-{n}.yaml", self.stack.workdir / f"nr-{n}.db"
        )
        daprd, app = self.stack.add_replica(
            daprd_args=DAPRD_SHUTDOWN_ARGS, config=config, CLASSIFIER_WORKERS="1"
        )
        with self._lock:
            self.members[self._address(daprd)] = (daprd, app)
        return daprd, app

    def wait_listed(self, daprd: Any, timeout: float = 120.0) -> None:
        address = self._address(daprd)
        self.harness.wait_for(lambda: address in self.listed, timeout, f"{address} ready and listed")

    def remove(self, daprd: Any) -> None:
        """The pod is terminating: unlisted at once."""
        address = self._address(daprd)
        with self._lock:
            self.members.pop(address, None)
            self._unlist(address)

    def close(self) -> None:
        self._done.set()
        self._thread.join()

    @staticmethod
    def _address(daprd: Any) -> str:
        return f"127.0.0.1:{daprd.internal_grpc_port}"

    def _ready(self, daprd: Any, app: Any) -> bool:
        if daprd.process.poll() is not None or app.process.poll() is not None:
            return False
        try:
            if self.readiness == "daprd":
                url = f"http://127.0.0.1:{daprd.http_port}/v1.0/healthz"
                with urllib.request.urlopen(url, timeout=1) as answer:
                    return bool(answer.status == 204)
            with grpc.insecure_channel(f"127.0.0.1:{daprd.app_port}") as channel:
                check = channel.unary_unary("/grpc.health.v1.Health/Check")
                return bool(check(b"", timeout=1) == GRPC_HEALTH_SERVING)
        except (OSError, grpc.RpcError):
            return False

    def _probe_loop(self) -> None:
        while not self._done.wait(PROBE_PERIOD_S if self.listed else 0.2):
            with self._lock:
                members = dict(self.members)
            for address, (daprd, app) in members.items():
                ready = self._ready(daprd, app)
                with self._lock:
                    if address not in self.members:
                        continue  # removed while probed
                    if ready:
                        self._list(address)
                    else:
                        self._unlist(address)

    def _list(self, address: str) -> None:
        with contextlib.closing(sqlite3.connect(self.db, timeout=10)) as db, db:
            db.execute(
                "REPLACE INTO hosts (registration_id, address, app_id, namespace, last_update) "
                "VALUES (?, ?, ?, '', unixepoch(CURRENT_TIMESTAMP))",
                (str(uuid.uuid4()), address, "image-classifier"),
            )
        self.listed.add(address)

    def _unlist(self, address: str) -> None:
        with contextlib.closing(sqlite3.connect(self.db, timeout=10)) as db, db:
            db.execute("DELETE FROM hosts WHERE address = ?", (address,))
        self.listed.discard(address)


def stop_as_kubernetes(endpoints: Endpoints, daprd: Any, app: Any, timeout: float = 40.0) -> dict[str, Any]:
    """Stop a replica as the kubelet stops a pod of deploy/kubernetes: the pod leaves its
    Service's endpoints (no caller resolves it any more) and daprd, which has no preStop hook,
    gets SIGTERM at once (it stops delivering events, keeps its APIs up for the app until the
    app reports unhealthy); the app gets SIGTERM after its preStop sleep and drains."""
    started = time.monotonic()
    endpoints.remove(daprd)
    os.kill(daprd.process.pid, signal.SIGTERM)
    time.sleep(PRESTOP_S)  # the preStop hook itself
    os.kill(app.process.pid, signal.SIGTERM)
    exited: dict[str, float] = {}
    deadline = started + timeout
    while len(exited) < 2 and time.monotonic() < deadline:
        for name, process in (("app", app.process), ("daprd", daprd.process)):
            if name not in exited and process.poll() is not None:
                exited[name] = round(time.monotonic() - started, 1)
        time.sleep(0.05)
    for process in (app.process, daprd.process):
        if process.poll() is None:  # past terminationGracePeriodSeconds: the kubelet's SIGKILL
            process.kill()
            process.wait()
    return {
        "exit_codes_app_daprd": [app.process.returncode, daprd.process.returncode],
        "exited_after_s": exited,
    }


def upload_model(harness: Any, caller_daprd: Any, work: Path) -> None:
    with harness.sidecar_env(caller_daprd), DaprClient() as client:
        labels = (BIRDS / "labels.txt").read_text().splitlines()
        DaprStore(client, work / "uploader").put("birds", (BIRDS / "model.tflite").read_bytes(), labels)


def start(
    harness: Any, s: Any, replicas: int, readiness: str, processing_timeout: str | None = None
) -> tuple[Endpoints, Any]:
    """The caller's daprd (first: it creates the resolver's table), then the replicas, each
    listed in the endpoints once ready; `processing_timeout` instead of components/pubsub.yaml's."""
    if processing_timeout:
        pubsub = s.resources / "pubsub.yaml"
        text, found = re.subn(
            r'(name: processingTimeout\n\s+value: )"[^"]*"',
            rf'\g<1>"{processing_timeout}"',
            pubsub.read_text(),
        )
        assert found == 1, "no processingTimeout in components/pubsub.yaml"
        pubsub.write_text(text)
    caller_daprd = s.add_sidecar("caller")
    endpoints = Endpoints(harness, s, readiness)
    for _ in range(replicas):
        endpoints.add_replica()
    return endpoints, caller_daprd


def run_rollout(replicas: int, work: Path, *, clients: int, stop: str, readiness: str) -> dict[str, Any]:
    """Only the rollout: N replicas with a model, warmed, then replaced one by one under load."""
    harness = _harness()
    with harness.stack(work, replicas=0) as s:
        endpoints, caller_daprd = start(harness, s, replicas, readiness)
        try:
            upload_model(harness, caller_daprd, work)
            for daprd, app in s.replicas:
                app.wait_ready()
                endpoints.wait_listed(daprd)
            caller = Caller(caller_daprd)
            invoke_load(caller, clients, clients * 3)  # warm connections and interpreters
            redis = s.redis.client()
            return {
                "replicas": replicas,
                "rollout": rollout(s, endpoints, caller, caller_daprd, redis, event_body(), stop),
            }
        finally:
            endpoints.close()


def run_stall(work: Path, *, events: int, readiness: str, processing_timeout: str | None) -> dict[str, Any]:
    """A replica stopped (stop_as_kubernetes) while the two drain a burst of events: the events its
    daprd had read ahead and not delivered when it stopped stay pending until another daprd
    reclaims them (processingTimeout, then the next redeliverInterval tick)."""
    harness = _harness()
    with harness.stack(work, replicas=0) as s:
        endpoints, caller_daprd = start(harness, s, 2, readiness, processing_timeout)
        try:
            upload_model(harness, caller_daprd, work)
            for daprd, app in s.replicas:
                app.wait_ready()
                endpoints.wait_listed(daprd)
            redis = s.redis.client()
            ids = [f"burst-{i}" for i in range(events)]
            publish(caller_daprd, ids, event_body())
            harness.wait_for(lambda: len(results(redis)[0]) >= events // 5, 300, "a fifth answered")
            stopped_at = time.time()
            answered_before = len(results(redis)[0])
            stopped = stop_as_kubernetes(endpoints, *s.replicas[1])
            pending_after = int(redis.xpending("images", "image-classifier")["pending"])
            harness.wait_for(
                lambda: set(ids) <= set(results(redis)[0]), 300, "every event answered", interval=0.5
            )
            seen, _ = results(redis)
            after = sorted(t - stopped_at for i, t in answered_at(redis).items() if i in set(ids))
            late = [t for t in after if t > 0]
            gaps = [b - a for a, b in itertools.pairwise(late)]
            return {
                "processing_timeout": processing_timeout or "as components/pubsub.yaml",
                "events": events,
                "answered_before_the_stop": answered_before,
                "pending_when_the_stopped_replica_exited": pending_after,
                "all_answered_s_after_the_stop": round(after[-1], 1),
                "longest_gap_s": round(max(gaps, default=0.0), 1),
                "answered_over_30_s_after_the_stop": sum(t > 30 for t in after),
                "lost": sum(seen[i] == 0 for i in ids),
                "duplicated": sum(max(0, seen[i] - 1) for i in ids),
                "stop": stopped,
            }
        finally:
            endpoints.close()


def run(
    replicas: int, work: Path, *, events: int, requests: int, clients: int, stop: str, readiness: str
) -> dict[str, Any]:
    harness = _harness()
    out: dict[str, Any] = {"replicas": replicas}
    with harness.stack(work, replicas=0) as s:
        endpoints, caller_daprd = start(harness, s, replicas, readiness)
        try:
            return _run(harness, s, endpoints, caller_daprd, out, events, requests, clients, stop)
        finally:
            endpoints.close()


def _run(
    harness: Any,
    s: Any,
    endpoints: Endpoints,
    caller_daprd: Any,
    out: dict[str, Any],
    events: int,
    requests: int,
    clients: int,
    stop: str,
) -> dict[str, Any]:
    work = s.workdir
    replicas = out["replicas"]
    redis = s.redis.client()
    body = event_body()

    # Backlog: the events wait in the stream until a replica has a model.
    publish(caller_daprd, [f"backlog-{i}" for i in range(events)], body)
    out["backlog_xlen"] = int(redis.xlen("images"))
    started = time.monotonic()
    upload_model(harness, caller_daprd, work)
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
    for daprd, app in s.replicas:
        app.wait_ready()
        endpoints.wait_listed(daprd)

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
        out["rollout"] = rollout(s, endpoints, caller, caller_daprd, redis, body, stop)
    return out


def rollout(
    s: Any, endpoints: Endpoints, caller: Caller, caller_daprd: Any, redis: Any, body: bytes, stop: str
) -> dict[str, Any]:
    """Each replica replaced in turn (a new one ready, then the old one stopped: `stop` is
    "kubernetes", stop_as_kubernetes, or "together", SIGTERM to both at once) under 2 clients'
    calls and 10 events/s, published until the last old replica is gone."""
    harness = _harness()
    done = threading.Event()
    outcomes: list[int] = []  # failed attempts per call
    lock = threading.Lock()
    published: dict[str, float] = {}  # event id -> wall-clock time of its publish

    def load() -> None:
        while not done.is_set():
            _, failed = caller.call()
            with lock:
                outcomes.append(failed)

    def publisher() -> None:
        for i in itertools.count():
            if done.is_set():
                return
            event_id = f"rollout-{i}"
            published[event_id] = time.time()
            publish_one(caller_daprd, event_id, body)
            time.sleep(0.1)

    caller.errors.clear()
    caller.failed_at.clear()
    wall_start = time.time()
    threads = [threading.Thread(target=publisher), *(threading.Thread(target=load) for _ in range(2))]
    for thread in threads:
        thread.start()
    stops = []
    started = time.monotonic()
    try:
        time.sleep(2.0)  # load on the old replicas first
        for old in list(s.replicas):
            daprd, _ = endpoints.add_replica()
            endpoints.wait_listed(daprd)  # the rolling update waits for the new pod to be ready
            stopped_at = round(time.time() - wall_start, 1)
            if stop == "kubernetes":
                stops.append(stop_as_kubernetes(endpoints, *old))
            else:
                endpoints.remove(old[0])
                stops.append(stop_together(*old))
            stops[-1]["at_s"] = stopped_at
            s.replicas.remove(old)
        time.sleep(2.0)  # and on the new ones after
    finally:
        done.set()
        for thread in threads:
            thread.join()
    rollout_s = time.monotonic() - started
    ids = set(published)
    harness.wait_for(lambda: ids <= set(results(redis)[0]), 300, "every rollout event answered", interval=0.5)
    seen, _ = results(redis)
    first = answered_at(redis)
    latencies = sorted(first[i] - published[i] for i in ids)
    return {
        "stop": stop,
        "rollout_s": round(rollout_s, 1),
        "calls": len(outcomes),
        "failed_once_then_ok": sum(1 <= n < ATTEMPTS for n in outcomes),
        "failed_all_attempts": sum(n == ATTEMPTS for n in outcomes),
        "events": len(ids),
        "events_lost": sum(seen[i] == 0 for i in ids),
        "events_duplicated": sum(max(0, seen[i] - 1) for i in ids),
        "event_latency_p50_s": round(percentile(latencies, 0.5), 2),
        "event_latency_max_s": round(latencies[-1], 1),
        "events_over_10_s": sum(seconds > 10 for seconds in latencies),
        "stops": stops,
        "errors": dict(caller.errors),
        "failed_at_s": [(round(at - wall_start, 2), what) for at, what in caller.failed_at],
    }


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rollout_line(run: dict[str, Any]) -> str:
    o = run["rollout"]
    calls = (
        f"{o['calls']} calls, {o['failed_once_then_ok']} failed then succeeded on a retry, "
        f"{o['failed_all_attempts']} failed {ATTEMPTS} times"
    )
    events = (
        f"{o['events']} events, lost {o['events_lost']}, duplicated {o['events_duplicated']}, "
        f"latency p50 {o['event_latency_p50_s']} s max {o['event_latency_max_s']} s"
    )
    stops = "; ".join(f"{x['exit_codes_app_daprd']} {x.get('exited_after_s', '')}" for x in o["stops"])
    return f"rollout N={run['replicas']} ({o['stop']}): {o['rollout_s']} s; {calls}; {events}; exits {stops}"


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
            lines.append("\n" + rollout_line(r))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="N = 1, 2 with a few requests: checks it works")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--rollout", type=int, metavar="N", help="only the rollout, with N replicas")
    parser.add_argument("--runs", type=int, default=1, help="with --rollout: how many times")
    parser.add_argument(
        "--stop",
        choices=("kubernetes", "together"),
        default="kubernetes",
        help="how an old replica is stopped (kubernetes: as the kubelet stops a pod; together: "
        "SIGTERM to app and daprd at once)",
    )
    parser.add_argument(
        "--readiness",
        choices=("app", "daprd"),
        default="app",
        help="when a replica is listed in the endpoints (app: the app's grpc.health.v1, the manifests' "
        "readinessProbe; daprd: daprd's own readiness, as without that probe)",
    )
    parser.add_argument(
        "--stall", type=int, metavar="EVENTS", help="only a replica stopped while 2 drain EVENTS events"
    )
    parser.add_argument("--processing-timeout", help="with --stall: the pubsub component's, e.g. 20s")
    args = parser.parse_args(argv)
    if args.stall:
        work = args.out / "replicas-work" / "stall"
        shutil.rmtree(work, ignore_errors=True)
        stalls = [
            run_stall(
                work / f"run{i}",
                events=args.stall,
                readiness=args.readiness,
                processing_timeout=args.processing_timeout,
            )
            for i in range(args.runs)
        ]
        for stall in stalls:
            print(f"stall: {json.dumps(stall)}", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "replicas-stall.json").write_text(json.dumps(stalls, indent=2))
        return 1 if any(stall["lost"] for stall in stalls) else 0
    counts, events, requests = ((1, 2), 20, 20) if args.smoke else ((1, 2, 3), 1000, 400)
    runs = []
    load = os.getloadavg()[0]
    # The stacks' logs (daprd, serve) stay in OUT/replicas-work until the next run.
    work = args.out / "replicas-work"
    shutil.rmtree(work, ignore_errors=True)
    if args.rollout:
        for i in range(args.runs):
            runs.append(
                run_rollout(
                    args.rollout, work / f"rollout{i}", clients=2, stop=args.stop, readiness=args.readiness
                )
            )
            print(rollout_line(runs[-1]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        report = {"cores": os.cpu_count(), "load_at_start": load, "runs": runs}
        (args.out / "replicas-rollout.json").write_text(json.dumps(report, indent=2))
        lossy = [r for r in runs if r["rollout"]["events_lost"] or r["rollout"]["failed_all_attempts"]]
        return 1 if lossy else 0
    for n in counts:
        runs.append(
            run(
                n,
                work / f"n{n}",
                events=events,
                requests=requests,
                clients=2,
                stop=args.stop,
                readiness=args.readiness,
            )
        )
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
