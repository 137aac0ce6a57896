"""Load and soak on loopback, bounded in count: `classifier serve` driven through OnInvoke and
OnTopicEvent by the daprd double.

Latencies are measured and reported (printed, and in docs/hardening.md's measurements), never
asserted; what is asserted is zero errors, right answers, resident memory that stops growing
after warm-up, and that a SIGTERM under pub/sub load loses no event.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import IMAGES
from daprd import Delivery, FakeDaprd
from hardening import HardeningLog
from service_process import ServiceProcess, new_daprd, upload

from service.edge.classifier_pb2 import ClassifyRequest, ClassifyResponse

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
BURGER = (IMAGES / "classify" / "burger.jpg").read_bytes()
BIRD_INDEX, BURGER_INDEX = 166, 934
WORKERS = 2
CONCURRENCY = 8
WARM_UP = 200
REQUESTS = 2000


@pytest.fixture
def daprd(tmp_path: Path) -> Iterator[FakeDaprd]:
    sidecar = new_daprd()
    upload(sidecar, tmp_path, "birds", "aiy_birds_v1")
    upload(sidecar, tmp_path, "small", "mobilenet_v1_0.25_224_quant_with_metadata")
    yield sidecar
    sidecar.close()


def start(daprd: FakeDaprd, workdir: Path) -> ServiceProcess:
    process = ServiceProcess(
        daprd, workdir, CLASSIFIER_DEFAULT_MODEL="birds", CLASSIFIER_WORKERS=str(WORKERS)
    )
    process.wait_ready()
    return process


# Three request forms, two models: (body, content type, expected top-1 index, decode).
JSON_BURGER = json.dumps(
    {"image_base64": base64.b64encode(BURGER).decode(), "model": "small", "top_k": 3}
).encode()
PROTO_BURGER = ClassifyRequest(image=BURGER, model="small", top_k=1).SerializeToString()


def _top1_json(data: bytes) -> int:
    return json.loads(data)["predictions"][0]["index"]


def _top1_proto(data: bytes) -> int:
    return ClassifyResponse.FromString(data).predictions[0].index


FORMS = [
    (BIRD, "application/octet-stream", BIRD_INDEX, _top1_json),
    (JSON_BURGER, "application/json", BURGER_INDEX, _top1_json),
    (PROTO_BURGER, "application/x-protobuf", BURGER_INDEX, _top1_proto),
]


def request(daprd: FakeDaprd, i: int) -> tuple[float, str]:
    """One invocation; its latency and "" or what was wrong."""
    body, content_type, expected, top1 = FORMS[i % len(FORMS)]
    started = time.perf_counter()
    result = daprd.invoke("classify", body, content_type=content_type)
    latency = time.perf_counter() - started
    if result.code != grpc.StatusCode.OK:
        return latency, f"{result.code.name}: {result.details}"
    answer = top1(result.data)
    return latency, "" if answer == expected else f"form {i % len(FORMS)}: top-1 {answer}, not {expected}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.mark.soak
def test_soak_through_invoke(daprd: FakeDaprd, tmp_path: Path, hardening: HardeningLog) -> None:
    process = start(daprd, tmp_path)
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            warm = list(pool.map(lambda i: request(daprd, i), range(WARM_UP)))
            assert not [error for _, error in warm if error]
            baseline = process.memory_kib()["VmRSS"]
            samples = [baseline]
            started = time.perf_counter()
            results = []
            for block in range(0, REQUESTS, 250):  # a resident-memory sample every 250 requests
                results += pool.map(lambda i: request(daprd, i), range(block, min(block + 250, REQUESTS)))
                samples.append(process.memory_kib()["VmRSS"])
            elapsed = time.perf_counter() - started
        healthy = daprd.health_check()
    finally:
        assert process.terminate() == 0
    errors = [error for _, error in results if error]
    latencies_ms = [latency * 1000 for latency, _ in results]
    growth = (samples[-1] - baseline) / baseline
    p50, p90, p99 = (percentile(latencies_ms, f) for f in (0.5, 0.9, 0.99))
    print(
        f"\nsoak: {REQUESTS} requests at concurrency {CONCURRENCY}, {WORKERS} workers: {elapsed:.1f} s "
        f"({REQUESTS / elapsed:.0f}/s); latency p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(latencies_ms):.1f} ms; RSS after warm-up {baseline >> 10} MiB, samples "
        f"{[s >> 10 for s in samples]} MiB ({growth:+.1%})"
    )
    hardening.measure("soak: throughput (requests/s, 2 workers, concurrency 8)", round(REQUESTS / elapsed, 1))
    hardening.measure(
        "soak: latency p50 / p90 / p99 / max (ms)",
        f"{p50:.1f} / {p90:.1f} / {p99:.1f} / {max(latencies_ms):.1f}",
    )
    hardening.measure(
        "soak: RSS after warm-up -> end (MiB)", f"{baseline >> 10} -> {samples[-1] >> 10} ({growth:+.1%})"
    )
    assert not errors, errors[:5]
    assert growth < 0.10, samples
    hardening.record(
        "load",
        "soak through OnInvoke",
        f"{WARM_UP} warm-up + {REQUESTS} requests at concurrency {CONCURRENCY} ({WORKERS} workers): "
        "raw, JSON and protobuf bodies, two models",
        "OK (all)",
        "0 errors, every answer right; resident memory after warm-up grew < 10 % (latencies: measurements)",
        healthy,
    )
    assert healthy


def test_sigterm_under_pubsub_load_loses_no_event(
    daprd: FakeDaprd, tmp_path: Path, hardening: HardeningLog
) -> None:
    process = start(daprd, tmp_path)
    deliveries: dict[str, Delivery] = {}
    spans: dict[str, tuple[float, float]] = {}  # when each delivery started and ended
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(1_000_000))

    def deliver_until_stopped() -> None:
        while not stop.is_set():
            with lock:
                event_id = f"load-{next(counter)}"
            started = time.monotonic()
            delivery = daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id=event_id)
            with lock:
                deliveries[event_id] = delivery
                spans[event_id] = (started, time.monotonic())

    def successes() -> int:
        with lock:
            return sum(d.status == "SUCCESS" for d in deliveries.values())

    threads = [threading.Thread(target=deliver_until_stopped) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while successes() < 40 and time.monotonic() < deadline:  # under load, well past start-up
            time.sleep(0.05)
        signalled = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        exit_code = process.process.wait(30)
        time.sleep(0.5)  # deliveries keep coming while the app is gone
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        process.kill()
    assert exit_code == 0
    in_flight = [i for i, (start, end) in spans.items() if start < signalled < end]

    results = {
        json.loads(p.data)["correlation_id"]: json.loads(p.data) for p in daprd.published("classifications")
    }
    statuses = {
        status: [i for i, d in deliveries.items() if d.status == status]
        for status in ("SUCCESS", "RETRY", "DROP")
    }
    assert not statuses["DROP"], [deliveries[i] for i in statuses["DROP"][:3]]
    # Acknowledged means processed: its result was published first.
    assert all(
        results[i]["predictions"][0]["index"] == BIRD_INDEX for i in statuses["SUCCESS"] if i in results
    )
    unprocessed = [i for i in statuses["SUCCESS"] if i not in results]
    assert not unprocessed, unprocessed
    assert statuses["RETRY"]  # the load went on past the shutdown
    # The drain: calls the app had accepted when the signal came, it finished (grace 10 s);
    # calls still on their way (sent late by a busy client: seen in CI) were refused and
    # answered RETRY, which daprd redelivers. "In flight" is timed by the client, so both.
    ends = {i: (deliveries[i].status, deliveries[i].last_error) for i in in_flight}
    assert any(status == "SUCCESS" for status, _ in ends.values()), ends
    assert all(status in ("SUCCESS", "RETRY") for status, _ in ends.values()), ends

    # daprd redelivers what was answered RETRY (or it sits in the dead-letter topic): a restarted
    # service processes every one of them.
    daprd.reset_app_channels()
    restarted = start(daprd, tmp_path)
    try:
        redelivered = [
            (event_id, daprd.deliver("pubsub", "images", BIRD, "application/octet-stream", event_id=event_id))
            for event_id in statuses["RETRY"]
        ]
    finally:
        assert restarted.terminate() == 0
    assert all(d.status == "SUCCESS" for _, d in redelivered), [
        d for _, d in redelivered if d.status != "SUCCESS"
    ][:3]
    results = {json.loads(p.data)["correlation_id"] for p in daprd.published("classifications")}
    assert set(deliveries) <= results  # every event has its result
    print(
        f"\nSIGTERM under load: {len(deliveries)} events; {len(statuses['SUCCESS'])} SUCCESS with results, "
        f"{len(statuses['RETRY'])} RETRY, all processed on redelivery; in flight at the signal: "
        f"{sorted(deliveries[i].status for i in in_flight)}"
    )
    hardening.measure(
        "SIGTERM under pub/sub load: events SUCCESS / RETRY (then redelivered)",
        f"{len(statuses['SUCCESS'])} / {len(statuses['RETRY'])}; {len(in_flight)} in flight at the signal",
    )
    hardening.record(
        "load",
        "SIGTERM under pub/sub load",
        f"{CONCURRENCY} threads delivering image events; SIGTERM once 40 succeeded; deliveries go on "
        "0.5 s after the exit",
        "exit 0; SUCCESS or RETRY",
        "no DROP; events in flight at the signal finished: SUCCESS; every SUCCESS had its result published "
        "first; every RETRY'd event redelivered to a restarted service: SUCCESS with its result",
    )
