"""Where the wasm overhead of a request goes: the profile behind docs/performance.md.

    python -m bench.profile            # a table on stdout and bench/out/profile.json
    python -m bench.profile --smoke    # a few runs each (CI): checks it works, measures nothing

Four parts, cases interleaved:
  floor       a guest that does nothing: the fixed cost of a fresh Store per request,
              and its phases through the wasmtime API
  operations  what one operation adds to a run of the probe guest bench/guests/costs.c
              (a run with it minus a run without it): reading stdin, a file, a stdout
              write, fresh memory, a host call
  default     the default guest on aiy_birds_v1 + bird.jpg: its overhead (the run minus
              decode and invoke), with and without a labels file, and with decode and
              invoke replaced by copies of their results (the same run without the cold
              caches their work leaves)
  grpc        the floor under the service case: OnInvoke on an AppCallback server whose
              handler does nothing (grpcio, another process, as in `python -m bench`),
              with an empty body and with the image as the body
  observability  what the edge adds to each request to observe it (issue 13): the trace
              context from the call's metadata, and `_finish` (metrics, the log line; OTLP
              export off) on a real Outcome; target under 50 us in all
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import wasmtime
from dapr.ext.grpc import App, InvokeMethodResponse
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2_grpc

from service.config import ServeSettings, Settings
from service.dapr_sdk import grpc_server
from service.default_guest import MODEL_DIR_IN_GUEST
from service.demo import invoke_request
from service.edge.app import ClassifierService
from service.inference.litert import LiteRtContext
from service.logs import TEXT_FORMAT, JsonFormatter
from service.pipeline import Classifier, Outcome
from service.stores.local import LocalStore
from service.tracing import continue_trace
from service.wasm import image as image_abi
from service.wasm.call import GuestCall
from service.wasm.host import Guest, Preopen

from .run import ROOT, SMOKE_NOTE, TOP_K, WORKLOADS, check_output_dir, interruptible, timed, wasm_overhead

sys.path.insert(0, str(ROOT / "wasm"))
from build import compile_guest

HOST_CALLS = 100  # per run of the host-call case
RECORDS = 200  # requests recorded per run of an observability case
OBSERVABILITY_TARGET_MS = 0.050


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def interleaved(cases: dict[str, Callable[[], float]], runs: int) -> dict[str, float]:
    """Median of each case over `runs` rounds, one run of every case per round, after a warm-up."""
    for case in cases.values():
        case()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, case in cases.items():
            samples[name].append(case())
    return {name: median_ms(values) for name, values in samples.items()}


def stubbed(run: Callable[[], float]) -> float:
    """`run` with Pillow's decode answering a copy of its first result (the profile decodes one
    image) and LiteRT's invoke doing nothing: the same host, guest and copies, without what
    their work does to the caches. The last of three runs in a row, so that what ran just
    before it did no real decode either."""
    real_decode, real_compute = image_abi.decode_rgb, LiteRtContext.compute
    decoded: list[np.ndarray] = []

    def decode_once(*args: Any, **kwargs: Any) -> np.ndarray:
        if not decoded:
            decoded.append(real_decode(*args, **kwargs))
        return decoded[0].copy()

    image_abi.decode_rgb = decode_once  # type: ignore[assignment]
    LiteRtContext.compute = lambda _context: None  # type: ignore[method-assign]
    try:
        run()
        run()
        return run()
    finally:
        image_abi.decode_rgb = real_decode
        LiteRtContext.compute = real_compute  # type: ignore[method-assign]


def floor_phases(classifier: Classifier, guest: Guest, runs: int) -> dict[str, float]:
    """The phases of a run that does nothing, through the wasmtime API (what host.run does)."""
    phases: dict[str, list[float]] = {
        name: [] for name in ("Store", "WasiConfig", "instantiate", "_start", "drop")
    }
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        store = wasmtime.Store(classifier.host.engine)
        store.set_epoch_deadline(1000)
        t1 = time.perf_counter()
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["costs"]
        store.set_wasi(wasi)
        t2 = time.perf_counter()
        instance = guest.pre.instantiate(store)
        start = instance.exports(store)["_start"]
        t3 = time.perf_counter()
        start(store)
        t4 = time.perf_counter()
        del start, instance, store
        t5 = time.perf_counter()
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            phases[name].append(seconds)
    return {name: median_ms(values[1:]) for name, values in phases.items()}


class EmptyApp(appcallback_pb2_grpc.AppCallbackServicer):
    def OnInvoke(self, request: common_pb2.InvokeRequest, context: grpc.ServicerContext) -> object:
        return common_pb2.InvokeResponse()


def serve_empty_app(sdk: bool) -> None:
    """The server side of the gRPC floor: prints its port, serves until killed. `sdk`: the
    SDK's `App` (its servicer wraps each call: InvokeMethodRequest, metadata, response
    packing), else a bare grpcio servicer; both on a pool of 2 threads."""
    options = [("grpc.max_receive_message_length", 32 << 20)]
    if sdk:
        app = App(thread_pool=ThreadPoolExecutor(max_workers=2), options=options)
        app.method("classify")(lambda request: InvokeMethodResponse(b"", "application/json"))
        server = grpc_server(app)
    else:
        server = grpc.server(ThreadPoolExecutor(max_workers=2), options=options)
        appcallback_pb2_grpc.add_AppCallbackServicer_to_server(EmptyApp(), server)
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    server.start()
    server.wait_for_termination()


def grpc_floor(image: bytes, model: str, runs: int) -> dict[str, float]:
    """OnInvoke round trips to a handler that does nothing, in another process: a bare grpcio
    servicer and the SDK's `App`, taking turns."""
    servers = {
        kind: subprocess.Popen(
            [sys.executable, "-m", "bench.profile", f"--empty-{kind}"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for kind in ("app", "sdk-app")
    }
    try:
        channels = {}
        for kind, server in servers.items():
            assert server.stdout is not None
            channels[kind] = grpc.insecure_channel(f"127.0.0.1:{int(server.stdout.readline())}")
        empty = common_pb2.InvokeRequest(method="classify")
        with_image = invoke_request(image, model, TOP_K)
        cases = {}
        for kind, title in (("app", "OnInvoke"), ("sdk-app", "OnInvoke, SDK App")):
            stub = appcallback_pb2_grpc.AppCallbackStub(channels[kind])
            cases[f"{title}, empty body"] = lambda stub=stub: timed(lambda: stub.OnInvoke(empty, timeout=10))
            cases[f"{title}, the image as body ({len(image)} bytes)"] = lambda stub=stub: timed(
                lambda: stub.OnInvoke(with_image, timeout=10)
            )
        return interleaved(cases, runs)
    finally:
        for server in servers.values():
            server.kill()
            server.wait()


def observability_costs(outcome: Outcome, runs: int) -> dict[str, float]:
    """The edge's cost per request of observing it, on a real Outcome (log lines to /dev/null)."""
    service = ClassifierService(Settings(), ServeSettings(port=0, metrics_port=0))
    metadata = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "a=b"}
    sink = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (closed below)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:], root.level = [sink], logging.INFO

    def per_request(record: Callable[[], None]) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            for _ in range(RECORDS):
                record()
            return (time.perf_counter() - started) / RECORDS

        return run

    def finish(formatter: logging.Formatter) -> Callable[[], None]:
        def record() -> None:
            sink.setFormatter(formatter)
            trace = continue_trace(metadata)
            service.metrics.inflight.inc()
            service._finish("invoke", outcome, trace, time.perf_counter(), time.time_ns())
            service.metrics.inflight.dec()

        return record

    try:
        return interleaved(
            {
                "trace context from the call's metadata": per_request(
                    lambda: _discard(continue_trace(metadata))
                ),
                "metrics only (Metrics.record)": per_request(
                    lambda: service.metrics.record("invoke", outcome, 0.0123)
                ),
                "all of it, text log line": per_request(finish(logging.Formatter(TEXT_FORMAT))),
                "all of it, JSON log line": per_request(finish(JsonFormatter())),
            },
            runs,
        )
    finally:
        root.handlers[:], root.level = saved
        sink.close()
        service.stop(grace_s=0)


def _discard(_: object) -> None:
    pass


def profile(smoke: bool, out_dir: Path) -> dict:
    runs = 3 if smoke else 200
    work = Path(tempfile.mkdtemp(prefix="classifier-profile-"))
    birds = WORKLOADS[0]
    store = LocalStore(work / "store")
    labels = (birds.model.parent / "labels.txt").read_text().splitlines()
    store.put(birds.name, birds.model.read_bytes(), labels=labels)
    classifier = Classifier(Settings(store_dir=work / "store", cache_dir=work / "cache"), store=store)
    image = birds.image.read_bytes()
    loaded = classifier.model(birds.name)
    model_dir = Preopen(loaded.stored.directory, MODEL_DIR_IN_GUEST)
    costs = classifier.host.load_guest_file(compile_guest(ROOT / "bench/guests/costs.c", work / "costs.wasm"))

    def probe(*ops: str) -> Callable[[], float]:
        def run() -> float:
            call = GuestCall(limits=classifier.settings.limits)
            result = classifier.host.run(costs, list(ops), call=call, stdin=image, preopens=[model_dir])
            assert result.exit_code == 0, result.stderr
            return result.elapsed_s

        return run

    try:
        operations = interleaved(
            {
                "nothing": probe(),
                "read stdin (fread, one 1 MiB buffer)": probe("stdin"),
                "read stdin (64 KiB buffer grown by realloc)": probe("stdin-realloc"),
                "read stdin (64 KiB buffer grown by malloc+memcpy)": probe("stdin-copy"),
                "read the labels file (fopen, fread, fclose)": probe(f"file:{MODEL_DIR_IN_GUEST}/labels.txt"),
                "one stdout write (captured)": probe("write"),
                "touch 8 MiB of fresh memory": probe("touch:8"),
                f"{HOST_CALLS} host calls (wasi-nn, failing at once)": probe(f"hostcall:{HOST_CALLS}"),
            },
            runs,
        )
        default = interleaved(
            {
                "default guest, reading the labels file": lambda: wasm_overhead(classifier, birds, image),
                "without it (as served: the host attaches the labels)": lambda: wasm_overhead(
                    classifier, birds, image, labels=False
                ),
                "as served, decode and invoke stubbed (warm caches)": lambda: stubbed(
                    lambda: wasm_overhead(classifier, birds, image, labels=False)
                ),
            },
            runs,
        )
        results = {
            "smoke": smoke,
            "image_bytes": len(image),
            "floor_ms": operations["nothing"],
            "floor_phases_ms": floor_phases(classifier, costs, runs),
            "operation_ms": {
                name: value - operations["nothing"] for name, value in operations.items() if name != "nothing"
            },
            "default_guest_overhead_ms": default,
            "grpc_floor_ms": grpc_floor(image, birds.name, runs),
            "observability_ms": observability_costs(classifier.run(image, birds.name, TOP_K), runs),
        }
    finally:
        classifier.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "profile.json").write_text(json.dumps(results, indent=2))
    return results


def cost(ms: float) -> str:
    """A cost in ms; a negative one (a difference of two noisy timings) is below the noise."""
    return f"{ms:7.3f} ms" if ms >= 0 else "below the noise"


def print_profile(results: dict) -> None:
    if results.get("smoke"):
        print(SMOKE_NOTE.replace("requests per case", "runs each").replace("the benchmark", "the profile"))
    floor = cost(results["floor_ms"]).strip()
    print(f"a run that does nothing (Store, WASI, instantiate, _start, drop): {floor}")
    print("  " + ", ".join(f"{name} {cost(ms).strip()}" for name, ms in results["floor_phases_ms"].items()))
    sections = [
        (f"what one operation adds to a run (stdin: {results['image_bytes']} bytes)", "operation_ms"),
        ("the default guest's overhead (run minus decode and invoke), aiy_birds_v1 + bird.jpg",
         "default_guest_overhead_ms"),
        ("the gRPC floor: an AppCallback server doing nothing (bare grpcio, the SDK's App), another process",
         "grpc_floor_ms"),
        ("observing a request at the edge (per request; OTLP export off)", "observability_ms"),
    ]  # fmt: skip
    for title, key in sections:
        if key not in results:  # recorded before the section existed
            continue
        print(f"\n{title}")
        for name, ms in results[key].items():
            print(f"  {name:52s} {cost(ms)}")
    observing = results.get("observability_ms", {})
    if observing and not results.get("smoke"):
        worst = max(observing["all of it, text log line"], observing["all of it, JSON log line"])
        verdict = "met" if worst < OBSERVABILITY_TARGET_MS else "MISSED"
        target_us = OBSERVABILITY_TARGET_MS * 1000
        print(f"  target: under {target_us:.0f} us per request: {verdict} ({worst * 1000:.1f} us)")


@interruptible
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few runs each: check it works (CI)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--empty-app", action="store_true", help=argparse.SUPPRESS)  # grpc_floor's servers
    parser.add_argument("--empty-sdk-app", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.empty_app or args.empty_sdk_app:
        serve_empty_app(sdk=args.empty_sdk_app)
        return 0
    check_output_dir(parser, args.out)
    print_profile(profile(args.smoke, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
