"""Streams of frames (docs/streams.md) through the daprd double: bulk subscription with per-entry
answers spread over the workers, stream fields echoed in results, the in-flight bound, the seq
gap counter, and the consumer's ordering recipe as the page shows it."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import IMAGES, SHARED
from dapr.clients import DaprClient
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from daprd import FakeDaprd
from prometheus_client.parser import text_string_to_metric_families
from real_dapr import free_port, sidecar_env
from service_process import ROOT, ServiceProcess, new_daprd, results_for, upload

from service.config import ServeSettings
from service.edge.requests import ImageFetcher, StreamFields, decode_json, stream_fields_of
from service.errors import ClassifierError

EXPECTED = {
    (case["model"], case["image"]): case
    for case in json.loads((SHARED / "expected.json").read_text())["cases"]
}
MODELS = {"birds": "aiy_birds_v1", "mobilenet": "mobilenet_v2_1.0_224_quant"}
BIRD = "images/classify/bird.jpg"
BURGER = "images/classify/burger.jpg"
CORRUPT = b"\xff\xd8\xff\xe0 a JPEG header and then nothing of an image " * 4


def frame(image: str | bytes, model: str = "birds", **stream: object) -> bytes:
    data = (SHARED / image).read_bytes() if isinstance(image, str) else image
    return json.dumps({"image_base64": base64.b64encode(data).decode(), "model": model, **stream}).encode()


def expected_top1(model: str, image: str) -> int:
    return int(EXPECTED[(MODELS[model], image)]["top1_index"])


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def start(daprd: FakeDaprd, workdir: Path, **env: str) -> tuple[ServiceProcess, int]:
    """A service beside the double, healthy; and its /metrics port."""
    port = free_port()
    service = ServiceProcess(
        daprd, workdir, CLASSIFIER_DEFAULT_MODEL="birds", CLASSIFIER_METRICS_PORT=str(port), **env
    )
    service.wait_ready()
    return service, port


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("streams")


@pytest.fixture(scope="module")
def daprd(workdir: Path) -> Iterator[FakeDaprd]:
    sidecar = new_daprd()
    upload(sidecar, workdir, "birds", "aiy_birds_v1")
    upload(sidecar, workdir, "mobilenet", "mobilenet_v2_1.0_224_quant")
    yield sidecar
    sidecar.close()


@pytest.fixture()
def bulk(daprd: FakeDaprd, workdir: Path) -> Iterator[tuple[ServiceProcess, int]]:
    """A fresh service with bulk subscription on (fresh: its peak gauge starts at 0)."""
    service, port = start(
        daprd,
        workdir,
        CLASSIFIER_WORKERS="2",
        CLASSIFIER_BULK_SUBSCRIBE="on",
        CLASSIFIER_BULK_MAX_MESSAGES="8",
        CLASSIFIER_BULK_MAX_AWAIT_MS="200",
    )
    yield service, port
    assert service.terminate() == 0


def publish(daprd: FakeDaprd, events: list[tuple[bytes, str, str]]) -> None:
    """Publish (data, content type, event id) to `images` through the double's API, at once."""
    with sidecar_env(daprd), DaprClient() as client:
        for data, content_type, event_id in events:
            client.publish_event(
                "pubsub",
                "images",
                data,
                data_content_type=content_type,
                publish_metadata={"cloudevent.id": event_id},
            )


# -- the subscription -------------------------------------------------------------------------------


def test_bulk_subscription_is_asked_for_with_its_settings(
    bulk: tuple[ServiceProcess, int], daprd: FakeDaprd
) -> None:
    images = next(s for s in daprd.subscriptions if s.topic == "images")
    assert (images.bulk_max_messages, images.bulk_max_await_ms) == (8, 200)
    assert images.dead_letter_topic == "images-deadletter"
    updates = next(s for s in daprd.subscriptions if s.topic == "model-updates")
    assert updates.bulk_max_messages == 0  # only images come in batches


def test_a_batch_with_a_corrupt_frame_gets_an_answer_per_entry(
    bulk: tuple[ServiceProcess, int], daprd: FakeDaprd
) -> None:
    """One bad frame never fails its batch: the good ones are classified (top-1 as the reference
    interpreter gives it), the bad ones DROP with an error result, each carrying its stream fields."""
    run = f"corrupt-{time.monotonic_ns()}"
    entries = [
        (frame(BIRD, stream_id=run, seq=0), "application/json", f"{run}-0"),
        (frame(CORRUPT, stream_id=run, seq=1), "application/json", f"{run}-1"),
        (frame(BURGER, "mobilenet", stream_id=run, seq=2), "application/json", f"{run}-2"),
        (
            b'{"image_base64": "%%%", "stream_id": "' + run.encode() + b'", "seq": 3}',
            "application/json",
            f"{run}-3",
        ),
        (frame(BIRD, "mobilenet", stream_id=run, seq=4), "application/json", f"{run}-4"),
    ]
    deliveries = daprd.deliver_batch("pubsub", "images", entries)
    assert [d.status for d in deliveries] == ["SUCCESS", "DROP", "SUCCESS", "DROP", "SUCCESS"], deliveries
    assert [d.dead_lettered for d in deliveries] == [False, True, False, True, False]
    results = {seq: results_for(daprd, f"{run}-{seq}") for seq in range(5)}
    for seq, (model, image) in {0: ("birds", BIRD), 2: ("mobilenet", BURGER), 4: ("mobilenet", BIRD)}.items():
        assert results[seq]["predictions"][0]["index"] == expected_top1(model, image), results[seq]
        assert (results[seq]["stream_id"], results[seq]["seq"]) == (run, seq)
    assert results[1]["error"]["code"] == "invalid_argument" and (
        results[1]["stream_id"],
        results[1]["seq"],
    ) == (run, 1)
    assert "not valid base64" in results[3]["error"]["message"] and results[3]["seq"] == 3
    dead = {p.event_id for p in daprd.published("images-deadletter")}
    assert {f"{run}-1", f"{run}-3"} <= dead and not {f"{run}-0", f"{run}-2", f"{run}-4"} & dead


def test_entries_of_a_batch_run_on_the_workers_at_once(
    bulk: tuple[ServiceProcess, int], daprd: FakeDaprd
) -> None:
    """Single events one after another are one at a time; a batch's entries run on both workers."""
    _, port = bulk
    for n in range(3):
        assert daprd.deliver("pubsub", "images", frame(BIRD), event_id=f"single-{n}").status == "SUCCESS"
    assert metrics(port)["classifier_inflight_events_peak"] == 1
    entries = [(frame(BIRD), "application/json", f"spread-{n}-{time.monotonic_ns()}") for n in range(6)]
    assert {d.status for d in daprd.deliver_batch("pubsub", "images", entries)} == {"SUCCESS"}
    after = metrics(port)
    assert after["classifier_inflight_events_peak"] == 2, after
    assert after["classifier_event_batches_total"] == 1
    assert after["classifier_inflight_requests"] == 0


def test_the_alpha_bulk_rpc_is_answered_the_same_way(
    bulk: tuple[ServiceProcess, int], daprd: FakeDaprd
) -> None:
    """daprd falls back to OnBulkTopicEventAlpha1 when OnBulkTopicEvent is UNIMPLEMENTED: the app
    answers it too, entry by entry."""
    run = f"alpha-{time.monotonic_ns()}"
    entries = [
        appcallback_pb2.TopicEventBulkRequestEntry(
            entry_id=f"entry-{n}",
            cloud_event=appcallback_pb2.TopicEventCERequest(
                id=f"{run}-{n}",
                source="test",
                type="t",
                spec_version="1.0",
                data_content_type="application/json",
                data=data,
            ),
            content_type="application/cloudevents+json",
        )
        for n, data in enumerate([frame(BIRD, stream_id=run, seq=0), frame(CORRUPT, stream_id=run, seq=1)])
    ]
    request = appcallback_pb2.TopicEventBulkRequest(
        id=run, entries=entries, topic="images", pubsub_name="pubsub", type="com.dapr.event.sent.bulk"
    )
    with grpc.insecure_channel(f"127.0.0.1:{daprd.app_port}") as channel:
        response = appcallback_pb2_grpc.AppCallbackAlphaStub(channel).OnBulkTopicEventAlpha1(
            request, timeout=60
        )
    statuses = {entry.entry_id: entry.status for entry in response.statuses}
    assert statuses == {
        "entry-0": appcallback_pb2.TopicEventResponse.SUCCESS,
        "entry-1": appcallback_pb2.TopicEventResponse.DROP,
    }
    assert results_for(daprd, f"{run}-0")["predictions"][0]["index"] == expected_top1("birds", BIRD)


def test_stream_fields_come_back_with_the_capture_latency(
    bulk: tuple[ServiceProcess, int], daprd: FakeDaprd
) -> None:
    captured = time.time() - 0.5
    run = f"echo-{time.monotonic_ns()}"
    publish(daprd, [(frame(BIRD, stream_id=run, seq=7, captured_at=captured), "application/json", run)])
    result = results_for(daprd, run, timeout=30)
    assert (result["stream_id"], result["seq"], result["captured_at"]) == (run, 7, captured)
    assert result["capture_latency_ms"] >= 500
    assert result["predictions"][0]["index"] == expected_top1("birds", BIRD)
    # Without captured_at, no latency; service invocation echoes the fields too.
    answer = daprd.invoke("classify", frame(BIRD, stream_id="cam:1", seq=3))
    body = json.loads(answer.data)
    assert (body["stream_id"], body["seq"]) == ("cam:1", 3) and "capture_latency_ms" not in body


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"stream_id": "a b"}, "stream_id must be 1-128 characters"),
        ({"stream_id": "x" * 129}, "stream_id must be 1-128 characters"),
        ({"stream_id": 7}, "stream_id must be"),
        ({"seq": -1}, "seq must be an integer from 0"),
        ({"seq": 2**63}, "seq must be an integer from 0"),
        ({"seq": 1.5}, "seq must be an integer"),
        ({"seq": True}, "seq must be an integer"),
        ({"captured_at": "yesterday"}, "captured_at must be a Unix time"),
        ({"captured_at": -3}, "captured_at must be a Unix time"),
    ],
)
def test_bad_stream_fields_are_invalid_argument(fields: dict[str, object], words: str) -> None:
    body = {"image_base64": base64.b64encode(b"x").decode(), "stream_id": "ok", "seq": 1, **fields}
    with pytest.raises(ClassifierError) as raised:
        decode_json(json.dumps(body).encode(), ImageFetcher())
    assert raised.value.kind.value == "invalid_argument" and words in raised.value.message
    # The error result echoes the valid ones only.
    echoed = stream_fields_of(json.dumps(body).encode()).to_dict()
    assert all(key not in echoed for key in fields) and echoed


def test_a_bad_seq_in_an_event_is_dropped_with_an_error_result(
    bulk: tuple[ServiceProcess, int], daprd: FakeDaprd
) -> None:
    run = f"bad-seq-{time.monotonic_ns()}"
    [delivery] = daprd.deliver_batch(
        "pubsub", "images", [(frame(BIRD, stream_id=run, seq=-4), "application/json", run)]
    )
    assert (delivery.status, delivery.dead_lettered) == ("DROP", True)
    result = results_for(daprd, run)
    assert "seq must be an integer" in result["error"]["message"] and result["stream_id"] == run


def test_a_binary_event_in_a_batch_says_why_it_is_empty(
    bulk: tuple[ServiceProcess, int], daprd: FakeDaprd
) -> None:
    """daprd's bulk delivery leaves out data_base64: the app says so rather than 'no data'."""
    run = f"binary-{time.monotonic_ns()}"
    publish(daprd, [((IMAGES / "classify" / "bird.jpg").read_bytes(), "application/octet-stream", run)])
    result = results_for(daprd, run, timeout=30)
    assert "bulk delivery leaves out the bytes of binary events" in result["error"]["message"]
    assert "CLASSIFIER_BULK_SUBSCRIBE=off" in result["error"]["message"]
    deadline = time.monotonic() + 30
    while not (mine := [d for p, d in daprd.delivered("images") if p.event_id == run]):
        assert time.monotonic() < deadline, "no delivery recorded"
        time.sleep(0.05)
    assert [(d.status, d.dead_lettered) for d in mine] == [("DROP", True)]


# -- the in-flight bound, ordering and gaps ---------------------------------------------------------


def test_the_in_flight_bound_holds_and_the_recipe_orders_the_results(daprd: FakeDaprd, workdir: Path) -> None:
    """200 frames published as fast as the double takes them, to a service with 2 workers allowed 1
    event at a time: every frame is answered once, never more than 1 at once; docs/streams.md's
    recipe gives them back in seq order, each once, though they arrived out of order and twice."""
    service, port = start(
        daprd,
        workdir,
        CLASSIFIER_WORKERS="2",
        CLASSIFIER_BULK_SUBSCRIBE="on",
        CLASSIFIER_MAX_INFLIGHT_EVENTS="1",
    )
    try:
        run = f"bound-{time.monotonic_ns()}"
        small = (IMAGES / "classify" / "burger-224.png").read_bytes()
        publish(
            daprd,
            [
                (frame(small, "mobilenet", stream_id=run, seq=n), "application/json", f"{run}-{n}")
                for n in range(200)
            ],
        )
        deadline = time.monotonic() + 180
        while (
            len(
                found := [
                    r
                    for r in (json.loads(p.data) for p in daprd.published("classifications"))
                    if r.get("stream_id") == run
                ]
            )
            < 200
        ):
            assert time.monotonic() < deadline, f"{len(found)} of 200 results"
            time.sleep(0.2)
        after = metrics(port)
        assert after["classifier_inflight_events_peak"] == 1, after
        assert after["classifier_event_batches_total"] < 200  # they came in batches
        assert after["classifier_stream_frames_skipped_total"] == 0
        assert all(r["predictions"][0]["label"] == "cheeseburger" for r in found)
    finally:
        assert service.terminate() == 0
    shuffled = out_of_order_and_twice(sorted(found, key=lambda r: r["seq"]), random.Random(7))
    recipe = recipe_namespace()
    shown = [shown for result in shuffled for shown in recipe["on_result"](result)]
    assert [r["seq"] for r in shown] == list(range(200))


def out_of_order_and_twice(results: list[dict], rng: random.Random) -> list[dict]:
    """Results as parallel deliveries hand them over: shuffled within runs of 16, and 30 of them
    delivered again a little later."""
    arrived = []
    for start in range(0, len(results), 16):
        run = results[start : start + 16]
        rng.shuffle(run)
        arrived.extend(run)
    for result in rng.sample(results, 30):
        later = min(len(arrived), arrived.index(result) + rng.randint(1, 40))
        arrived.insert(later, result)
    return arrived


def recipe_namespace() -> dict:
    """docs/streams.md's ordering recipe, run as the page shows it."""
    page = (ROOT / "docs" / "streams.md").read_text()
    section = page.split("## Ordering and duplicates", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict = {}
    exec(compile(code, "docs/streams.md", "exec"), namespace)  # the page's own code
    return namespace


def test_the_recipe_gives_up_on_a_frame_that_never_comes() -> None:
    order = recipe_namespace()["StreamOrder"](window=4)
    shown = [r["seq"] for seq in [0, 1, 3, 4, 5, 6, 7, 2, 8] for r in order.add({"seq": seq})]
    assert shown == [0, 1, 3, 4, 5, 6, 7, 8]  # 2 waited for while 4 were waiting, then skipped


def test_a_gap_in_seq_is_counted_and_logged(bulk: tuple[ServiceProcess, int], daprd: FakeDaprd) -> None:
    """Frames never delivered (trimmed by maxLenApprox) show as skipped once 256 later ones came;
    a frame delivered again counts as repeated."""
    service, port = bulk
    run = f"gap-{time.monotonic_ns()}"
    small = (IMAGES / "classify" / "burger-224.png").read_bytes()
    seqs = [0, 1, 2, 3, 300, 2]
    entries = [
        (frame(small, "mobilenet", stream_id=run, seq=s), "application/json", f"{run}-{i}")
        for i, s in enumerate(seqs)
    ]
    for entry in entries:  # one at a time: the order of arrival is the order given
        assert daprd.deliver_batch("pubsub", "images", [entry])[0].status == "SUCCESS"
    after = metrics(port)
    assert after["classifier_stream_frames_skipped_total"] == 300 - 256 - 4
    assert after["classifier_stream_frames_repeated_total"] == 1
    assert f"stream {run}: 40 frame(s) never arrived before seq 300" in service.log()


# -- bulk off, and the settings ----------------------------------------------------------------------


def test_bulk_off_delivers_one_event_at_a_time(daprd: FakeDaprd, workdir: Path) -> None:
    """The default: no bulk subscription; binary events keep their bytes; stream fields still come back."""
    service, _ = start(daprd, workdir, CLASSIFIER_WORKERS="2")
    try:
        images = next(s for s in daprd.subscriptions if s.topic == "images")
        assert images.bulk_max_messages == 0
        run = f"off-{time.monotonic_ns()}"
        before = len(daprd.batches)
        publish(
            daprd,
            [
                ((IMAGES / "classify" / "bird.jpg").read_bytes(), "application/octet-stream", f"{run}-raw"),
                (
                    frame(BIRD, stream_id=run, seq=1, captured_at=time.time()),
                    "application/json",
                    f"{run}-json",
                ),
            ],
        )
        raw, framed = results_for(daprd, f"{run}-raw", 30), results_for(daprd, f"{run}-json", 30)
        assert raw["predictions"][0]["index"] == expected_top1("birds", BIRD)
        assert framed["seq"] == 1 and framed["capture_latency_ms"] >= 0
        assert len(daprd.batches) == before  # no bulk call was made
    finally:
        assert service.terminate() == 0


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        (
            "CLASSIFIER_BULK_SUBSCRIBE",
            "yes",
            "classifier: CLASSIFIER_BULK_SUBSCRIBE='yes': must be on or off",
        ),
        (
            "CLASSIFIER_BULK_MAX_MESSAGES",
            "0",
            "classifier: CLASSIFIER_BULK_MAX_MESSAGES='0': must be at least 1",
        ),
        (
            "CLASSIFIER_BULK_MAX_AWAIT_MS",
            "soon",
            "classifier: CLASSIFIER_BULK_MAX_AWAIT_MS='soon': not a number",
        ),
        (
            "CLASSIFIER_MAX_INFLIGHT_EVENTS",
            "-2",
            "classifier: CLASSIFIER_MAX_INFLIGHT_EVENTS='-2': must be at least 1",
        ),
    ],
)
def test_a_bad_stream_setting_ends_serve_with_one_line(variable: str, value: str, line: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))}
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env={**env, variable: value},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (1, "", line + "\n")


def test_the_page_shows_the_bad_setting_as_serve_prints_it() -> None:
    page = (ROOT / "docs" / "streams.md").read_text()
    shown = page.split("$ CLASSIFIER_BULK_SUBSCRIBE=yes classifier serve\n", 1)[1].split("\n", 1)[0]
    assert shown == "classifier: CLASSIFIER_BULK_SUBSCRIBE='yes': must be on or off"


def test_settings_defaults() -> None:
    settings = ServeSettings.from_env({"CLASSIFIER_WORKERS": "3"})
    assert (settings.bulk_subscribe, settings.bulk_max_messages, settings.bulk_max_await_ms) == (
        False,
        32,
        20,
    )
    assert settings.max_inflight_events == 6
    on = ServeSettings.from_env({"CLASSIFIER_BULK_SUBSCRIBE": "ON", "CLASSIFIER_MAX_INFLIGHT_EVENTS": "5"})
    assert on.bulk_subscribe and on.max_inflight_events == 5
    assert StreamFields("s", 1, 2.0).to_dict() == {"stream_id": "s", "seq": 1, "captured_at": 2.0}
