"""The benchmark: this service side by side with native LiteRT, in one run, cases interleaved.

    python -m bench            # the full run: a table on stdout, bench/out/results.json, bench/out/bench.png
    python -m bench --smoke    # a few requests per case (CI): checks the benchmark works, measures nothing
    python -m bench --no-daprd # without the cases through a real daprd (no Redis, no daprd install)

Cases, for each workload (model + image):
  native         Pillow decode+resize (the service's own decode_rgb) + LiteRT invoke, in this process
  guest          the in-process pipeline through the default wasm guest (Classifier.classify)
  service        `classifier serve` on the embedded store, driven over gRPC OnInvoke as daprd does,
                 sequential (c=1) and with 2, 4 and 8 concurrent clients
  native best    the same with one interpreter using every core: the best latency for one image
  native threads one interpreter per core in threads: the throughput floor for the service
  peer           the plain SDK `App` a user would otherwise write (bench/peer.py: Pillow + LiteRT,
                 no wasm) in its own process, called like the service: the price of the sandbox
  app direct     `classifier serve` behind a real daprd (Redis state store, bench/sidecar.py), called
                 over gRPC OnInvoke straight to its port, as daprd calls it
  daprd http     the same app through daprd's HTTP invoke API (keep-alive http.client)
  daprd grpc     the same app through daprd's gRPC API (InvokeService on the raw stub)
                 these three at c=1 and at c=<cores>; the sidecar hop is daprd minus app direct
  cold start     process start -> healthy -> first response, empty and warm compiled-module cache
The wasm overhead per request (Store + instantiate + every host call, minus decode and invoke)
comes from timings the host takes itself (GuestResult.elapsed_s, GuestCall.host_seconds); next to
it, the gRPC round trip: the service's `models` method (no guest run) with the image as the body.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from dapr.proto.runtime.v1 import appcallback_pb2_grpc

from service.config import Settings
from service.demo import free_port, invoke_request, start_serve, stop_serve, wait_healthy
from service.imaging import decode_rgb
from service.inference.litert import new_interpreter
from service.pipeline import Classifier
from service.stores.local import LocalStore
from service.wasm.call import GuestCall

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOP_K = 5
CONCURRENCY = (2, 4, 8)
# The sidecar cases: sequential, and at the core count, beyond which the service's throughput
# stays flat (docs/performance.md, "Scaling").
SIDECAR_CONCURRENCY = (1, os.cpu_count() or 2)
SIDECAR_CASES = ("app direct", "daprd http", "daprd grpc")


@dataclass(frozen=True)
class Workload:
    name: str  # the model's name in the store
    model: Path
    image: Path

    @property
    def label(self) -> str:
        return f"{self.name} + {self.image.name}"


WORKLOADS = (
    Workload(
        "aiy_birds_v1",
        SHARED / "models" / "aiy_birds_v1" / "model.tflite",
        SHARED / "images/classify/bird.jpg",
    ),
    Workload(
        "mobilenet_v2_1.0_224_quant",
        SHARED / "models" / "mobilenet_v2_1.0_224_quant" / "model.tflite",
        SHARED / "images/classify/grace_hopper.jpg",
    ),
)


class Native:
    """The floor: what a Python service calling LiteRT directly would do per request."""

    def __init__(self, workload: Workload, threads: int = 1) -> None:
        self.model = workload.model.read_bytes()
        self.image = workload.image.read_bytes()
        self.interpreter = new_interpreter(self.model, threads)
        detail = self.interpreter.get_input_details()[0]
        self.input_index = detail["index"]
        self.height, self.width = int(detail["shape"][1]), int(detail["shape"][2])
        out = self.interpreter.get_output_details()[0]
        self.output_index = out["index"]
        self.scale, self.zero_point = out["quantization"]

    def fresh(self) -> Native:
        """Another interpreter for another thread."""
        return Native.__new__(Native)._copy_from(self)

    def _copy_from(self, other: Native) -> Native:
        self.__dict__.update(other.__dict__)
        self.interpreter = new_interpreter(self.model, 1)
        return self

    def classify(self) -> list[tuple[int, float]]:
        pixels = decode_rgb(self.image, self.width, self.height)
        self.interpreter.set_tensor(self.input_index, pixels[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output_index)[0]
        scores = (raw.astype(np.float32) - self.zero_point) * self.scale if self.scale else raw
        top = np.argpartition(scores, -TOP_K)[-TOP_K:]
        return [(int(i), float(scores[i])) for i in top[np.argsort(scores[top])[::-1]]]


class ServiceClient:
    """`classifier serve` as a process, called as daprd calls it."""

    def __init__(
        self, store: Path, cache: Path, workers: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        env = {"CLASSIFIER_STORE": str(store), "CLASSIFIER_CACHE_DIR": str(cache), **(env or {})}
        if workers:
            env["CLASSIFIER_WORKERS"] = str(workers)
        self.started = time.perf_counter()
        self.server, self.port = start_serve(env, stderr=subprocess.DEVNULL)
        try:
            self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
            self.app = appcallback_pb2_grpc.AppCallbackStub(self.channel)
        except BaseException:  # Ctrl-C right after the start included: stop what was started
            stop_serve(self.server)
            raise

    def wait_healthy(self) -> float:
        wait_healthy(self.channel, self.server, self.port)
        return time.perf_counter() - self.started

    def invoke(self, image: bytes, model: str) -> dict:
        response = self.app.OnInvoke(invoke_request(image, model, TOP_K), timeout=60)
        return json.loads(response.data.value)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.server.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> int:
        self.channel.close()
        return stop_serve(self.server)


class PeerClient:
    """bench/peer.py as a process (one method per model), called as daprd calls an app."""

    def __init__(self) -> None:
        port = free_port()
        models = [f"{w.name}={w.model}" for w in WORKLOADS]
        self.server = subprocess.Popen(
            [sys.executable, "-m", "bench.peer", str(port), *models], cwd=ROOT, stderr=subprocess.DEVNULL
        )
        self.port = port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.app = appcallback_pb2_grpc.AppCallbackStub(self.channel)
        try:
            wait_healthy(self.channel, self.server, port)
        except BaseException:  # Ctrl-C included: stop what was started
            self.close()
            raise

    def invoke(self, image: bytes, model: str) -> dict:
        request = invoke_request(image, model, TOP_K)
        request.method = model
        response = self.app.OnInvoke(request, timeout=60)
        return json.loads(response.data.value)

    def close(self) -> int:
        self.channel.close()
        return stop_serve(self.server)


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def concurrent(function: Callable[[], object], clients: int, per_client: int) -> tuple[list[float], float]:
    """`clients` threads calling `function` `per_client` times each: latencies, requests/s."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        mine = [timed(function) for _ in range(per_client)]
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, len(latencies) / (time.perf_counter() - started)


def wasm_overhead(classifier: Classifier, workload: Workload, image: bytes, *, labels: bool = True) -> float:
    """One run of the default guest, timed inside the host: all but decode and invoke
    (`labels=False`: without the labels file, to see what reading it costs)."""
    loaded = classifier.model(workload.name)
    call = GuestCall(
        limits=classifier.settings.limits,
        named_graphs={loaded.name: loaded.graph},
        graph_cache=classifier.graph_cache,
    )
    result = classifier.run_default_guest(classifier.guest, loaded, image, TOP_K, call, labels=labels)
    assert result.exit_code == 0, result.stderr
    return result.elapsed_s - sum(call.host_seconds.values())


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {
        "n": len(samples),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def cold_start(
    store: Path, cache: Path, workload: Workload, image: bytes, workers: int | None = None
) -> dict:
    service = ServiceClient(store, cache, workers)
    try:
        healthy = service.wait_healthy()
        service.invoke(image, workload.name)
        first = time.perf_counter() - service.started
        for _ in range(20):
            service.invoke(image, workload.name)
        rss = service.rss_mib()
    finally:
        code = service.close()
    return {"healthy_s": healthy, "first_response_s": first, "rss_mib": rss, "exit_code": code}


def run(smoke: bool, rounds: int, per_round: int, out_dir: Path, daprd: bool = True) -> dict:
    if smoke:
        rounds, per_round = 1, 3
    work = Path(tempfile.mkdtemp(prefix="classifier-bench-"))
    store_dir = work / "store"
    store = LocalStore(store_dir)
    for workload in WORKLOADS:
        store.put(workload.name, workload.model.read_bytes())
    classifier = Classifier(Settings(store_dir=store_dir, cache_dir=work / "cache"), store=store)
    service: ServiceClient | None = None
    peer: PeerClient | None = None
    results: dict = {
        "smoke": smoke,
        "workloads": {},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }
    sidecar = None
    try:
        service = ServiceClient(store_dir, work / "cache")
        service.wait_healthy()
        peer = PeerClient()
        if daprd:
            sidecar = start_sidecar(work / "dapr")
            results["sidecar"] = sidecar_info(sidecar)
        for workload in WORKLOADS:
            results["workloads"][workload.label] = measure(
                workload, classifier, service, peer, rounds, per_round, sidecar
            )
        results["service_rss_mib"] = service.rss_mib()
        if sidecar is not None:
            results["sidecar"]["floor"] = sidecar_floor(sidecar, 5 if smoke else 300)
            results["sidecar"].update(
                app_rss_mib=sidecar.app_rss_mib(),
                daprd_rss_mib=sidecar.daprd_rss_mib(),
                http_connections_opened=sidecar.http_connections,
                http_reconnects=sidecar.http_reconnects,
                http_response_headers=sidecar.response_headers,
            )
    finally:
        if service is not None:
            results["service_exit_code"] = service.close()
        if peer is not None:
            results["peer_exit_code"] = peer.close()
        classifier.close()
        if sidecar is not None:
            results["sidecar"]["exit_codes"] = sidecar.close()

    birds = WORKLOADS[0]
    image = birds.image.read_bytes()
    starts: dict[str, list[dict]] = defaultdict(list)
    for _ in range(1 if smoke else 3):
        cache = Path(tempfile.mkdtemp(dir=work))
        starts["empty cache"].append(cold_start(store_dir, cache, birds, image))
        starts["warm cache"].append(cold_start(store_dir, cache, birds, image))
        starts["warm cache, 1 worker"].append(cold_start(store_dir, cache, birds, image, workers=1))
    results["cold_start"] = {
        case: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for case, runs in starts.items()
    }
    results["targets"] = targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out_dir / "bench.png")
    return results


def start_sidecar(workdir: Path):
    """Redis, daprd and `classifier serve` with both models, through tests/real_dapr.py."""
    from tools.dapr import install

    from .sidecar import Sidecar

    install()  # a cached no-op once built
    return Sidecar(workdir, {w.name: w.model.read_bytes() for w in WORKLOADS}, TOP_K)


def sidecar_info(sidecar) -> dict:
    from tools.dapr import DAPR_RUNTIME_VERSION

    return {
        "daprd": DAPR_RUNTIME_VERSION,
        "ready_s": sidecar.ready_s,
        "clients": {
            "app direct": "grpc AppCallbackStub.OnInvoke to the app's port (one channel)",
            "daprd http": "http.client.HTTPConnection per client thread, kept alive, "
            "POST /v1.0/invoke/image-classifier/method/classify?model=M&top_k=5, raw bytes",
            "daprd grpc": "raw dapr_pb2_grpc.DaprStub.InvokeService (one channel), "
            "the image in InvokeRequest.data (an Any), not the SDK's DaprClient",
        },
        "body": "the raw image, content type application/octet-stream, model and top_k in the query",
    }


def sidecar_floor(sidecar, calls: int) -> dict:
    """The hop without the work: the `models` method (no guest run; it ignores the body),
    with an empty body and with the birds image, the three clients taking turns."""
    image = WORKLOADS[0].image.read_bytes()
    clients = {
        "app direct": sidecar.call_direct,
        "daprd http": sidecar.call_http,
        "daprd grpc": sidecar.call_grpc,
    }
    floor = {}
    for body_name, body in (("empty body", b""), (f"{len(image)} B body", image)):
        samples: dict[str, list[float]] = defaultdict(list)
        for call in clients.values():  # warm
            json.loads(call("models", body))
        for _ in range(calls):
            for name, call in clients.items():
                samples[name].append(timed(lambda call=call, body=body: call("models", body)))
        cases = {name: percentiles(values) for name, values in samples.items()}
        floor[body_name] = {
            "cases": cases,
            "hop_ms": {api: hop(samples[f"daprd {api}"], samples["app direct"]) for api in ("http", "grpc")},
        }
    return floor


def hop(via: list[float], direct: list[float]) -> dict:
    """Through daprd minus direct: the difference of the percentiles, and (the clients take
    turns request by request) the percentiles of the paired differences."""
    via_ms, direct_ms = np.array(via) * 1000, np.array(direct) * 1000
    result = {
        "p50_ms": float(np.percentile(via_ms, 50) - np.percentile(direct_ms, 50)),
        "p99_ms": float(np.percentile(via_ms, 99) - np.percentile(direct_ms, 99)),
    }
    if len(via_ms) == len(direct_ms):
        paired = via_ms - direct_ms
        result["paired_p50_ms"] = float(np.percentile(paired, 50))
        result["paired_p99_ms"] = float(np.percentile(paired, 99))
    return result


def measure(
    workload: Workload,
    classifier: Classifier,
    service: ServiceClient,
    peer: PeerClient,
    rounds: int,
    per_round: int,
    sidecar=None,
) -> dict:
    image = workload.image.read_bytes()
    native = Native(workload)
    native_best = Native(workload, threads=os.cpu_count() or 2)
    natives = [native.fresh() for _ in range(os.cpu_count() or 2)]

    def by_guest() -> object:
        return classifier.classify(image, workload.name, TOP_K)

    def by_service() -> object:
        return service.invoke(image, workload.name)

    def by_peer() -> object:
        return peer.invoke(image, workload.name)

    models_request = invoke_request(image, workload.name, TOP_K)
    models_request.method = "models"

    def round_trip() -> object:  # the service's gRPC round trip with the image, no guest run
        return service.app.OnInvoke(models_request, timeout=60)

    through: dict[str, Callable[[], object]] = {}
    if sidecar is not None:
        through = {
            "app direct": lambda: sidecar.direct(image, workload.name),
            "daprd http": lambda: sidecar.http(image, workload.name),
            "daprd grpc": lambda: sidecar.grpc(image, workload.name),
        }

    for _ in range(3):  # warm every path
        native.classify(), native_best.classify(), by_guest(), by_service(), by_peer(), round_trip()
        for call in through.values():
            call()
    check_same_answer(native, classifier, service, workload, image, {**through, "peer": by_peer})
    assert native_best.classify()[0][0] == native.classify()[0][0]

    file_labels = not classifier.host_attaches_labels(classifier.business)  # as a request runs it
    latencies: dict[str, list[float]] = defaultdict(list)
    throughput: dict[str, list[float]] = defaultdict(list)
    overhead: list[float] = []
    trips: list[float] = []
    for _ in range(rounds):  # interleaved, so drifts in machine load hit every case alike
        latencies["native"] += [timed(native.classify) for _ in range(per_round)]
        latencies["native best"] += [timed(native_best.classify) for _ in range(per_round)]
        latencies["guest"] += [timed(by_guest) for _ in range(per_round)]
        for name, call in (("service c=1", by_service), ("peer c=1", by_peer)):
            sequential = [timed(call) for _ in range(per_round)]
            latencies[name] += sequential
            throughput[name].append(len(sequential) / sum(sequential))
        overhead += [wasm_overhead(classifier, workload, image, labels=file_labels) for _ in range(per_round)]
        trips += [timed(round_trip) for _ in range(per_round)]
        lat, rate = concurrent_natives(natives, per_round)
        latencies["native threads"] += lat
        throughput["native threads"].append(rate)
        for clients in CONCURRENCY:
            for name, call in (("service", by_service), ("peer", by_peer)):
                lat, rate = concurrent(call, clients, per_round)
                latencies[f"{name} c={clients}"] += lat
                throughput[f"{name} c={clients}"].append(rate)
        if through:
            sidecar_round(through, per_round, latencies, throughput)
    return summarise(latencies, throughput, overhead, trips)


def sidecar_round(
    through: dict[str, Callable[[], object]],
    per_round: int,
    latencies: dict[str, list[float]],
    throughput: dict[str, list[float]],
) -> None:
    """Sequential: the three clients take turns request by request, so the hop is measured
    against the same app under the same load; then each with `clients` threads."""
    spent: dict[str, float] = defaultdict(float)
    for _ in range(per_round):
        for name, call in through.items():
            took = timed(call)
            latencies[f"{name} c=1"].append(took)
            spent[name] += took
    for name in through:
        throughput[f"{name} c=1"].append(per_round / spent[name])
    for clients in SIDECAR_CONCURRENCY:
        if clients == 1:
            continue
        for name, call in through.items():
            lat, rate = concurrent(call, clients, per_round)
            latencies[f"{name} c={clients}"] += lat
            throughput[f"{name} c={clients}"].append(rate)


def concurrent_natives(natives: list[Native], per_round: int) -> tuple[list[float], float]:
    """One thread per interpreter, each with its own."""
    pool = iter(natives)
    local = threading.local()

    def classify() -> object:
        if not hasattr(local, "native"):
            local.native = next(pool)
        return local.native.classify()

    return concurrent(classify, len(natives), per_round)


def check_same_answer(
    native: Native,
    classifier: Classifier,
    service: ServiceClient,
    workload: Workload,
    image: bytes,
    through: dict[str, Callable[[], object]],
):
    """Every case must do the same work: the same top-1."""
    top1 = native.classify()[0][0]
    assert classifier.classify(image, workload.name, TOP_K)["predictions"][0]["index"] == top1
    assert service.invoke(image, workload.name)["predictions"][0]["index"] == top1
    for name, call in through.items():
        answer = call()
        assert answer["predictions"][0]["index"] == top1, (name, answer)
        assert answer["model"] == workload.name, (name, answer)


def summarise(
    latencies: dict[str, list[float]],
    throughput: dict[str, list[float]],
    overhead: list[float],
    trips: list[float],
) -> dict:
    cases = {name: percentiles(samples) for name, samples in latencies.items()}
    native_p50 = cases["native"]["p50_ms"]
    for name, case in cases.items():
        case["ratio_p50_to_native"] = case["p50_ms"] / native_p50
        if name in throughput:
            case["requests_per_s"] = statistics.median(throughput[name])
    hops = {}
    for clients in SIDECAR_CONCURRENCY:
        direct = latencies.get(f"app direct c={clients}")
        for api in ("http", "grpc"):
            via = latencies.get(f"daprd {api} c={clients}")
            if direct and via:
                result = hop(via, direct)
                if clients != 1:  # concurrent requests do not pair up
                    result = {k: v for k, v in result.items() if not k.startswith("paired")}
                hops[f"{api} c={clients}"] = result
    return {
        "cases": cases,
        # through daprd minus direct OnInvoke to the same app (see `hop`)
        "sidecar_hop_ms": hops,
        "wasm_overhead_ms": {
            "p50": float(np.percentile(overhead, 50) * 1000),
            "p90": float(np.percentile(overhead, 90) * 1000),
        },
        # the service's `models` method with the image as the body: gRPC, the SDK and the edge
        "grpc_round_trip_ms": {
            "p50": float(np.percentile(trips, 50) * 1000),
            "p90": float(np.percentile(trips, 90) * 1000),
        },
        "samples_ms": {name: [round(s * 1000, 3) for s in samples] for name, samples in latencies.items()},
    }


def targets(results: dict) -> list[dict]:
    rows = []
    for label, workload in results["workloads"].items():
        cases = workload["cases"]
        best = best_throughput(cases, "service")
        service_p50 = cases["service c=1"]["p50_ms"]
        rows += [
            target(
                label,
                "service p50 (c=1) / native best p50",
                service_p50 / cases["native best"]["p50_ms"],
                "<=",
                1.10,
            ),
            target(
                label,
                "best service throughput / native threads",
                best / cases["native threads"]["requests_per_s"],
                ">=",
                0.9,
            ),
            target(
                label, "wasm overhead per request, p50 (ms)", workload["wasm_overhead_ms"]["p50"], "<=", 0.5
            ),
            target(
                label,
                "service p50 (c=1) / peer p50 (c=1)",
                service_p50 / cases["peer c=1"]["p50_ms"],
                "<=",
                1.05,
            ),
            target(
                label,
                "best service throughput / best peer",
                best / best_throughput(cases, "peer"),
                ">=",
                0.95,
            ),
        ]
    warm = results["cold_start"]["warm cache"]["first_response_s"]
    rows.append(target("aiy_birds_v1", "cold start to first response, warm cache (s)", warm, "<=", 1.0))
    return rows


def best_throughput(cases: dict, name: str) -> float:
    """Requests/s of `name` (service or peer) at its best concurrency."""
    return max(cases[f"{name} c={c}"]["requests_per_s"] for c in (1, *CONCURRENCY))


def target(workload: str, what: str, value: float, op: str, limit: float) -> dict:
    met = value <= limit if op == "<=" else value >= limit
    return {
        "workload": workload,
        "target": what,
        "value": round(value, 3),
        "limit": f"{op} {limit}",
        "met": met,
    }


SMOKE_NOTE = (
    "smoke run: a few requests per case, to check that the benchmark works; the figures measure nothing"
)


def print_table(results: dict) -> None:
    smoke = bool(results.get("smoke"))
    if smoke:
        print(SMOKE_NOTE)
    for label, workload in results["workloads"].items():
        print(f"\n{label}")
        print(f"  {'case':<18}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'req/s':>9}{'x native p50':>14}")
        for name, case in workload["cases"].items():
            rate = f"{case['requests_per_s']:9.1f}" if "requests_per_s" in case else " " * 9
            print(
                f"  {name:<18}{case['p50_ms']:9.2f}{case['p90_ms']:9.2f}{case['p99_ms']:9.2f}{rate}"
                f"{case['ratio_p50_to_native']:14.3f}"
            )
        for name, hop in workload.get("sidecar_hop_ms", {}).items():
            print(f"  sidecar hop, daprd {name} - app direct: {hop_text(hop)}")
        overhead = workload["wasm_overhead_ms"]
        print(
            "  wasm overhead per request (host timings): "
            f"p50 {overhead['p50']:.3f} ms, p90 {overhead['p90']:.3f} ms"
        )
        trip = workload.get("grpc_round_trip_ms")
        if trip is not None:
            print(
                "  gRPC round trip (the `models` method, the image as body): "
                f"p50 {trip['p50']:.3f} ms, p90 {trip['p90']:.3f} ms"
            )
    floor = results.get("sidecar", {}).get("floor", {})
    for body, measured in floor.items():
        print(f"\nsidecar floor: the `models` method, {body}")
        for name, case in measured["cases"].items():
            print(f"  {name:<18}{case['p50_ms']:9.2f}{case['p90_ms']:9.2f}{case['p99_ms']:9.2f}")
        for api, hop in measured["hop_ms"].items():
            print(f"  sidecar hop, daprd {api} - app direct: {hop_text(hop)}")
    print("\ncold start (aiy_birds_v1; medians)")
    for case, values in results["cold_start"].items():
        print(
            f"  {case:<22} healthy {values['healthy_s']:.2f} s, "
            f"first response {values['first_response_s']:.2f} s, RSS {values['rss_mib']:.0f} MiB"
        )
    if smoke:
        print("\ntargets: not judged in a smoke run (run `python -m bench` for them)")
        return
    print("\ntargets")
    for row in results["targets"]:
        mark = "met" if row["met"] else "NOT met"
        print(f"  {row['workload'][:26]:<28}{row['target']:<46}{row['value']:>9} {row['limit']:<8} {mark}")


def cost_text(ms: float, digits: int = 2) -> str:
    """A cost (what a hop or an operation adds): a negative difference is below the noise."""
    return f"{ms:+.{digits}f} ms" if ms >= 0 else "below the noise"


def hop_text(hop: dict) -> str:
    text = f"p50 {cost_text(hop['p50_ms'])}, p99 {cost_text(hop['p99_ms'])}"
    if "paired_p50_ms" in hop:
        text += f" (paired: p50 {cost_text(hop['paired_p50_ms'])}, p99 {cost_text(hop['paired_p99_ms'])})"
    return text


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = results["workloads"]
    figure, axes = plt.subplots(2, len(workloads), figsize=(7 * len(workloads), 9), squeeze=False)
    for column, (label, workload) in enumerate(workloads.items()):
        samples = workload["samples_ms"]
        names = list(samples)
        axis = axes[0][column]
        axis.boxplot([samples[n] for n in names], showfliers=False)
        axis.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        axis.set_ylabel("latency (ms)")
        axis.set_title(label)
        axis = axes[1][column]
        cases = workload["cases"]
        levels = [1, *CONCURRENCY]
        axis.plot(
            levels, [cases[f"service c={c}"]["requests_per_s"] for c in levels], marker="o", label="service"
        )
        for name in SIDECAR_CASES:
            if f"{name} c=1" in cases:
                axis.plot(
                    SIDECAR_CONCURRENCY,
                    [cases[f"{name} c={c}"]["requests_per_s"] for c in SIDECAR_CONCURRENCY],
                    marker="s",
                    linestyle=":",
                    label=name,
                )
        axis.axhline(
            cases["native threads"]["requests_per_s"], color="grey", linestyle="--", label="native threads"
        )
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel("requests/s")
        axis.set_xticks(levels)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def positive_int(text: str) -> int:
    if not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, at least 1")
    return int(text)


def check_output_dir(parser: argparse.ArgumentParser, out: Path) -> None:
    """--out is made (or found writable) before the run, not after minutes of it."""
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: not a directory; give a directory for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".writable").touch()
        (out / ".writable").unlink()
    except OSError as exc:
        parser.error(f"--out {out}: {exc.strerror or exc}; give a directory this user can write")


def interruptible(run_main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Ctrl-C: the finally clauses stop what was started; one line, exit code 130."""

    def main(argv: list[str] | None = None) -> int:
        try:
            return run_main(argv)
        except KeyboardInterrupt:
            print("bench: interrupted; nothing written", file=sys.stderr)
            return 130

    return main


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few requests per case: check it works (CI)")
    parser.add_argument("--rounds", type=positive_int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument(
        "--per-round", type=positive_int, default=20, help="requests per case per round (default 20)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--no-daprd", action="store_true", help="skip the cases through a real daprd (and its Redis)"
    )
    args = parser.parse_args(argv)
    check_output_dir(parser, args.out)
    load = os.getloadavg()[0]
    results = run(args.smoke, args.rounds, args.per_round, args.out, daprd=not args.no_daprd)
    results["machine"]["load_average_at_start"] = load
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nload average at start {load:.2f}; results in {args.out}/results.json and {args.out}/bench.png")
    return 0
