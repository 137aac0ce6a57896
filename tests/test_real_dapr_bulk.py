"""Bulk subscription through the real daprd 1.18 and Redis, and through the daprd double: the same
frames published to both give the same answers (docs/streams.md "Bulk subscription")."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import IMAGES, SHARED
from dapr.clients import DaprClient
from prometheus_client.parser import text_string_to_metric_families
from real_dapr import free_port, sidecar_env, stack, wait_for
from service_process import ServiceProcess, new_daprd, upload
from test_real_dapr_pubsub import dead_letters, publisher, results, upload_birds

pytestmark = pytest.mark.dapr

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
BIRD_TOP1 = next(
    case["top1_index"]
    for case in json.loads((SHARED / "expected.json").read_text())["cases"]
    if (case["model"], case["image"]) == ("aiy_birds_v1", "images/classify/bird.jpg")
)
CORRUPT = b"\xff\xd8\xff\xe0 a JPEG header and then nothing of an image " * 4
GOOD_FRAMES = 12
BULK_ENV = {
    "CLASSIFIER_WORKERS": "2",
    "CLASSIFIER_BULK_SUBSCRIBE": "on",
    "CLASSIFIER_BULK_MAX_MESSAGES": "8",
    "CLASSIFIER_BULK_MAX_AWAIT_MS": "200",
}

# What one published event becomes: ("ok", top-1 index, seq) or ("error", code, seq), and whether the
# event went to the dead-letter topic.
Answer = tuple[tuple[str, object, object], bool]


def frame(image: bytes, stream_id: str, **fields: object) -> bytes:
    body = {"image_base64": base64.b64encode(image).decode(), "model": "birds", "stream_id": stream_id}
    return json.dumps({**body, **fields}).encode()


def events(run: str) -> list[tuple[str, bytes, str]]:
    """(event id, data, content type): good frames of a stream, a corrupt one, one with a bad seq,
    and a binary image (which daprd's bulk delivery empties)."""
    captured = time.time()
    good = [
        (f"{run}-{n}", frame(BIRD, run, seq=n, captured_at=captured), "application/json")
        for n in range(GOOD_FRAMES)
    ]
    return [
        *good[:5],
        (f"{run}-corrupt", frame(CORRUPT, run, seq=100), "application/json"),
        *good[5:],
        (f"{run}-bad-seq", frame(BIRD, run, seq=-1), "application/json"),
        (f"{run}-binary", BIRD, "application/octet-stream"),
    ]


def expected(run: str) -> dict[str, Answer]:
    answers: dict[str, Answer] = {f"{run}-{n}": (("ok", BIRD_TOP1, n), False) for n in range(GOOD_FRAMES)}
    answers[f"{run}-corrupt"] = (("error", "invalid_argument", 100), True)
    answers[f"{run}-bad-seq"] = (("error", "invalid_argument", None), True)
    answers[f"{run}-binary"] = (("error", "invalid_argument", None), True)
    return answers


def answer_of(result: dict, dead_lettered: bool) -> Answer:
    if "error" in result:
        return ("error", result["error"]["code"], result.get("seq")), dead_lettered
    return ("ok", result["predictions"][0]["index"], result.get("seq")), dead_lettered


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def check_results(found: dict[str, dict], run: str) -> None:
    """What both sidecars' results must show beyond the answers: the stream fields and latency,
    and why the binary event is empty."""
    for n in range(GOOD_FRAMES):
        result = found[f"{run}-{n}"]
        assert result["stream_id"] == run and result["capture_latency_ms"] >= 0, result
    assert "bulk delivery leaves out the bytes of binary events" in found[f"{run}-binary"]["error"]["message"]
    assert "seq must be an integer" in found[f"{run}-bad-seq"]["error"]["message"]


def through_real_daprd(workdir: Path, run: str) -> tuple[dict[str, Answer], dict[str, float]]:
    metrics_port = free_port()
    with stack(workdir, replicas=0) as built, publisher(built) as pub:
        daprd, app = built.add_replica(**BULK_ENV, CLASSIFIER_METRICS_PORT=str(metrics_port))
        upload_birds(daprd, workdir)
        daprd.wait_app_healthy(90)
        r = built.redis.client()
        for event_id, data, content_type in events(run):
            pub.http(data, content_type, event_id)
        want = set(expected(run))

        def all_answered() -> dict[str, dict] | None:
            found = {k: v[0] for k, v in results(r).items() if k.startswith(run)}
            return found if want <= set(found) else None

        found = wait_for(all_answered, 120, lambda: f"results: {sorted(results(r))}\n{app.log()[-2000:]}")
        dead = dead_letters(r)
        assert all(len(v) == 1 for k, v in results(r).items() if k.startswith(run))  # once each
        check_results(found, run)
        log = daprd.log()
        assert "falling back to OnBulkTopicEventAlpha1" not in log  # OnBulkTopicEvent was answered
        figures = metrics(metrics_port)
        wait_for(lambda: r.xpending("images", "image-classifier")["pending"] == 0, 30, "pending entries")
        return {k: answer_of(v, k in dead) for k, v in found.items()}, figures


def through_the_double(workdir: Path, run: str) -> tuple[dict[str, Answer], dict[str, float]]:
    daprd = new_daprd()
    metrics_port = free_port()
    try:
        upload(daprd, workdir, "birds", "aiy_birds_v1")
        service = ServiceProcess(daprd, workdir, **BULK_ENV, CLASSIFIER_METRICS_PORT=str(metrics_port))
        try:
            service.wait_ready()
            with sidecar_env(daprd), DaprClient() as client:
                for event_id, data, content_type in events(run):
                    client.publish_event(
                        "pubsub",
                        "images",
                        data,
                        data_content_type=content_type,
                        publish_metadata={"cloudevent.id": event_id},
                    )
            want = set(expected(run))
            daprd.wait_for_delivered("images", len(want), timeout=120)  # answered, dead letters sent
            found = {
                r["correlation_id"]: r
                for r in (json.loads(p.data) for p in daprd.published("classifications"))
            }
            dead = {p.event_id for p in daprd.published("images-deadletter")}
            assert len(daprd.published("classifications")) == len(want)  # once each
            check_results(found, run)
            figures = metrics(metrics_port)
        finally:
            assert service.terminate() == 0
    finally:
        daprd.close()
    return {k: answer_of(v, k in dead) for k, v in found.items()}, figures


SIDECARS: dict[str, Callable[[Path, str], tuple[dict[str, Answer], dict[str, float]]]] = {
    "real daprd": through_real_daprd,
    "double": through_the_double,
}
ANSWERS: dict[str, dict[str, Answer]] = {}  # by sidecar, with the run id taken out


@pytest.mark.parametrize("sidecar", list(SIDECARS))
def test_a_burst_of_frames_in_batches(
    sidecar: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Frames published at once arrive in batches (fewer calls than frames, one batch at a time
    with Redis), the entries of a batch on both workers; every frame is answered on its own."""
    run = f"bulk-{uuid.uuid4().hex[:8]}"
    answers, figures = SIDECARS[sidecar](tmp_path, run)
    assert answers == expected(run)
    total = len(expected(run))
    assert 1 <= figures["classifier_event_batches_total"] < total, figures
    assert figures["classifier_inflight_events_peak"] == 2, figures  # one batch at a time: spread entries
    ANSWERS[sidecar] = {k.removeprefix(run): v for k, v in answers.items()}
    with capsys.disabled():
        print(
            f"\n[bulk] {sidecar}: {total} events in {figures['classifier_event_batches_total']:.0f} batches"
        )


def test_the_double_and_the_real_daprd_agree() -> None:
    if set(ANSWERS) != set(SIDECARS):
        pytest.skip("needs both runs of test_a_burst_of_frames_in_batches")
    assert ANSWERS["double"] == ANSWERS["real daprd"]


def test_the_in_flight_bound_holds_under_a_burst(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """200 frames published as fast as daprd takes them, to 2 workers allowed 1 event at a time:
    never more than 1 at once, every frame answered once, none skipped."""
    metrics_port = free_port()
    run = f"burst-{uuid.uuid4().hex[:8]}"
    env = {**BULK_ENV, "CLASSIFIER_MAX_INFLIGHT_EVENTS": "1", "CLASSIFIER_METRICS_PORT": str(metrics_port)}
    with stack(tmp_path, replicas=0) as built, publisher(built) as pub:
        daprd, app = built.add_replica(**env)
        upload_birds(daprd, tmp_path)
        daprd.wait_app_healthy(90)
        r = built.redis.client()
        started = time.monotonic()
        for n in range(200):
            pub.http(frame(BIRD, run, seq=n), "application/json", f"{run}-{n}")

        def answered() -> list[list[dict]] | None:
            found = [v for k, v in results(r).items() if k.startswith(run)]
            return found if len(found) == 200 else None

        found = wait_for(answered, 240, lambda: f"{len(answered() or [])} of 200\n{app.log()[-1500:]}")
        assert all(len(v) == 1 and v[0]["predictions"][0]["index"] == BIRD_TOP1 for v in found)
        assert sorted(v[0]["seq"] for v in found) == list(range(200))
        figures = metrics(metrics_port)
        seconds = time.monotonic() - started
    assert figures["classifier_inflight_events_peak"] == 1, figures
    assert figures["classifier_stream_frames_skipped_total"] == 0
    assert figures["classifier_event_batches_total"] < 200
    with capsys.disabled():
        batches = figures["classifier_event_batches_total"]
        print(f"\n[bulk] 200 frames, 1 in flight: {batches:.0f} batches, all answered in {seconds:.1f} s")
