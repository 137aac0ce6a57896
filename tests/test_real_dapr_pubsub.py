"""Pub/sub through the real daprd 1.18 and Redis Streams: images in, results out, dead letters.

Results and dead letters are read straight from Redis (XRANGE): components-contrib's
pubsub/redis XADDs each message as the fields `data` (the CloudEvent JSON daprd built, or the
raw bytes with rawPayload) and `metadata` (the publish metadata as JSON)
(pubsub/redis/redis.go:110-120). The event ids are chosen by the publisher through the
`cloudevent.id` metadata (or a whole CloudEvent), since daprd's publish API does not return
them: that id is what the app puts in each result's `correlation_id`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from conftest import IMAGES, MODELS, ROOT
from dapr.clients import DaprClient
from real_dapr import Daprd, Stack, dapr_install, sidecar_env, stack, wait_for

from service.stores.dapr import DaprStore

pytestmark = pytest.mark.dapr
T = TypeVar("T")

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
BIRD_LABEL = "Aix galericulata"
GROUP = "image-classifier"  # the consumer group: consumerID defaults to the app id
NOT_AN_IMAGE = b"this is not an image, just text " * 8


def _component_value(name: str, key: str) -> str:
    match = re.search(rf"- name: {key}\n\s+value: \"?([^\"\n]+)", (ROOT / "components" / name).read_text())
    assert match, f"{key} not in components/{name}"
    return match.group(1)


MAX_LEN = int(_component_value("pubsub.yaml", "maxLenApprox"))
MAX_RETRIES = int(re.search(r"maxRetries: (\d+)", (ROOT / "components/resiliency.yaml").read_text()).group(1))


# --- reading the streams ------------------------------------------------------------------------------


def cloudevents(client: redis.Redis, stream: str) -> list[dict]:
    """The CloudEvents on a stream, in order; raw entries as {"raw": bytes, "metadata": {...}}."""
    events = []
    for _, fields in client.xrange(stream):
        metadata = json.loads(fields.get(b"metadata", b"{}") or b"{}")
        try:
            event = json.loads(fields[b"data"])
        except ValueError:
            event = None
        events.append(event if isinstance(event, dict) else {"raw": fields[b"data"], "metadata": metadata})
    return events


def results(client: redis.Redis) -> dict[str, list[dict]]:
    """correlation_id -> every result published for it (more than one is a duplicate)."""
    found: dict[str, list[dict]] = {}
    for event in cloudevents(client, "classifications"):
        data = event.get("data")
        if isinstance(data, dict) and "correlation_id" in data:
            found.setdefault(data["correlation_id"], []).append(data)
    return found


def dead_letters(client: redis.Redis) -> dict[str, list[dict]]:
    """event id -> its entries on images-deadletter (a raw entry is found by its cloudevent.id metadata)."""
    found: dict[str, list[dict]] = {}
    for event in cloudevents(client, "images-deadletter"):
        event_id = event["metadata"].get("cloudevent.id", "") if "raw" in event else event.get("id", "")
        found.setdefault(event_id, []).append(event)
    return found


def pending(client: redis.Redis, stream: str) -> int:
    return client.xpending(stream, GROUP)["pending"]


def poll(
    fetch: Callable[[], T], done: Callable[[T], bool], timeout: float, what: Callable[[], str] | str
) -> T:
    """fetch() until done(value), within timeout; the value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")


# --- publishing ---------------------------------------------------------------------------------------


def json_body(image: bytes = BIRD, model: str | None = "birds", top_k: int | None = 3) -> bytes:
    body: dict[str, object] = {"image_base64": base64.b64encode(image).decode()}
    if model is not None:
        body["model"] = model
    if top_k is not None:
        body["top_k"] = top_k
    return json.dumps(body).encode()


def cloudevent(event_id: str, image: bytes = BIRD, *, data_base64: str | None = None) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "camera-7",
            "type": "camera.frame",
            "datacontenttype": "image/jpeg",
            "data_base64": data_base64 if data_base64 is not None else base64.b64encode(image).decode(),
        }
    ).encode()


@dataclass
class Publisher:
    """A daprd of its own (no app), as another service publishing to `images` would have."""

    daprd: Daprd
    client: DaprClient  # one for all threads: sidecar_env() changes the process' environment

    def http(self, body: bytes, content_type: str, event_id: str, **metadata: str) -> str:
        if content_type != "application/cloudevents+json":
            metadata["cloudevent.id"] = event_id
        answer = self.daprd.publish("images", body, content_type, metadata=metadata)
        assert answer.status == 204, (answer.status, answer.body)
        return event_id

    def grpc(self, body: bytes | str, content_type: str, event_id: str) -> str:
        metadata = {} if content_type == "application/cloudevents+json" else {"cloudevent.id": event_id}
        self.client.publish_event(
            "pubsub", "images", body, data_content_type=content_type, publish_metadata=metadata
        )
        return event_id


@contextlib.contextmanager
def publisher(built: Stack) -> Iterator[Publisher]:
    daprd = Daprd(
        built.workdir,
        built.resources,
        built.config,
        app_id=f"pubsub-publisher-{uuid.uuid4().hex[:8]}",
        app_health_check=False,
    )
    daprd.start()
    try:
        with sidecar_env(daprd):
            client = DaprClient()
        try:
            yield Publisher(daprd, client)
        finally:
            client.close()
    finally:
        daprd.stop()


def upload_birds(daprd: Daprd, workdir: Path) -> None:
    model = MODELS / "aiy_birds_v1"
    with sidecar_env(daprd), DaprClient() as client:
        store = DaprStore(client, workdir / "uploader-cache")
        store.put(
            "birds", (model / "model.tflite").read_bytes(), (model / "labels.txt").read_text().splitlines()
        )


# Every way of publishing one bird, and what must come of it: ("ok", None) is classified;
# ("error", code, words) is an error result plus the event on the dead-letter topic.
Way = Callable[[Publisher, str], str]
GOOD_WAYS: dict[str, Way] = {
    "json over HTTP": lambda p, i: p.http(json_body(), "application/json", i),
    "json over gRPC": lambda p, i: p.grpc(json_body().decode(), "application/json", i),
    "octet-stream over HTTP": lambda p, i: p.http(BIRD, "application/octet-stream", i),
    "octet-stream over gRPC": lambda p, i: p.grpc(BIRD, "application/octet-stream", i),
    "cloudevent data_base64 over HTTP": lambda p, i: p.http(cloudevent(i), "application/cloudevents+json", i),
    "cloudevent data_base64 over gRPC": lambda p, i: p.grpc(cloudevent(i), "application/cloudevents+json", i),
}
BAD_WAYS: dict[str, tuple[Way, str, str]] = {
    "image/jpeg (daprd empties it)": (
        lambda p, i: p.http(BIRD, "image/jpeg", i),
        "invalid_argument",
        "daprd delivers no data for content type 'image/jpeg'",
    ),
    "text/plain (daprd corrupts it)": (
        lambda p, i: p.grpc(BIRD, "text/plain", i),
        "invalid_argument",
        "replacing the image's non-UTF-8 bytes with U+FFFD",
    ),
    "raw bytes as application/json (dapr publish --data-file)": (
        lambda p, i: p.http(BIRD, "application/json", i),
        "invalid_argument",
        "the event's data is a JSON string, not an object",
    ),
    "not an image": (
        lambda p, i: p.http(NOT_AN_IMAGE, "application/octet-stream", i),
        "invalid_argument",
        "could not be decoded",
    ),
    "unknown model": (
        lambda p, i: p.http(json_body(model="nosuchmodel"), "application/json", i),
        "not_found",
        "",
    ),
    "bad base64": (
        lambda p, i: p.http(b'{"image_base64": "%%%", "model": "birds"}', "application/json", i),
        "invalid_argument",
        "not valid base64",
    ),
}


def assert_classified(result: dict) -> None:
    assert "error" not in result, result
    assert result["model"] == "birds" and result["predictions"][0]["label"] == BIRD_LABEL, result


def assert_error(result: dict, code: str, words: str) -> None:
    assert result.get("error", {}).get("code") == code, result
    assert words in result["error"]["message"], result


# --- the shipped setup: health check on, events published before the app and before any model ---------


@dataclass
class Ready:
    stack: Stack
    publisher: Publisher
    backlog_good: list[str] = field(default_factory=list)
    backlog_bad: list[str] = field(default_factory=list)
    results_before_model: int = -1
    probes_failed_before_model: int = 0

    @property
    def redis(self) -> redis.Redis:
        return self.stack.redis.client()


@pytest.fixture(scope="module")
def ready(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ready]:
    workdir = tmp_path_factory.mktemp("real-pubsub")
    with stack(workdir, replicas=0) as built, publisher(built) as pub:
        state = Ready(built, pub)
        # Before the app exists: one of every good way, and one DROP.
        for way in GOOD_WAYS.values():
            state.backlog_good.append(way(pub, f"early-{uuid.uuid4()}"))
        state.backlog_bad.append(
            pub.http(NOT_AN_IMAGE, "application/octet-stream", f"early-bad-{uuid.uuid4()}")
        )
        daprd, _ = built.add_replica()  # app health check on, as dapr.yaml has it; no model yet
        wait_for(
            lambda: daprd.log().count("App health probe could not complete") >= 3,
            90,
            lambda: daprd.log()[-2000:],
        )
        state.probes_failed_before_model = daprd.log().count("App health probe could not complete")
        state.results_before_model = len(state.redis.xrange("classifications"))
        upload_birds(daprd, workdir)
        daprd.wait_app_healthy(90)
        yield state


def test_events_published_before_the_app_and_its_model_are_all_answered(ready: Ready) -> None:
    # While the app was unhealthy (no model), daprd read nothing and nothing was answered.
    assert ready.probes_failed_before_model >= 3
    assert ready.results_before_model == 0
    everyone = ready.backlog_good + ready.backlog_bad
    found = poll(
        lambda: results(ready.redis),
        lambda r: set(everyone) <= set(r),
        120,
        lambda: f"missing {set(everyone) - set(results(ready.redis))}\n{ready.stack.app.log()[-2000:]}",
    )
    for event_id in ready.backlog_good:
        [result] = found[event_id]
        assert_classified(result)
    for event_id in ready.backlog_bad:
        assert_error(found[event_id][0], "invalid_argument", "could not be decoded")
    assert set(ready.backlog_bad) <= set(wait_for(lambda: dead_letters(ready.redis), 30, "dead letters"))


def test_every_way_of_publishing_an_image(ready: Ready) -> None:
    """Good ways are classified; content types daprd empties or corrupts are dropped with a clear
    error result and dead-lettered; rawPayload never reaches the app (daprd dead-letters it)."""
    r = ready.redis
    good = {name: way(ready.publisher, f"way-{uuid.uuid4()}") for name, way in GOOD_WAYS.items()}
    bad = {
        name: (way(ready.publisher, f"way-{uuid.uuid4()}"), code, words)
        for name, (way, code, words) in BAD_WAYS.items()
    }
    raw_id = ready.publisher.http(BIRD, "application/octet-stream", f"raw-{uuid.uuid4()}", rawPayload="true")
    # The Dapr CLI: `dapr publish --data-file IMAGE` posts the bytes as application/json.
    cli_id = f"cli-{uuid.uuid4()}"
    cli = subprocess.run(
        [
            str(dapr_install().dapr),
            "publish",
            "--publish-app-id",
            ready.publisher.daprd.app_id,
            "--pubsub",
            "pubsub",
            "--topic",
            "images",
            "--data-file",
            str(IMAGES / "classify" / "bird.jpg"),
            "--metadata",
            json.dumps({"cloudevent.id": cli_id}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr

    expected = set(good.values()) | {event_id for event_id, _, _ in bad.values()} | {cli_id}
    found = poll(
        lambda: results(r),
        lambda found: expected <= set(found),
        120,
        lambda: f"missing {expected - set(results(r))}",
    )
    for name, event_id in good.items():
        assert len(found[event_id]) == 1, name
        assert_classified(found[event_id][0])
    for name, (event_id, code, words) in bad.items():
        assert len(found[event_id]) == 1, name
        assert_error(found[event_id][0], code, words)
    assert_error(found[cli_id][0], "invalid_argument", "the event's data is a JSON string")
    # What daprd stored for the CLI's publish: a JSON CloudEvent, data a string with U+FFFD.
    [cli_event] = [e for e in cloudevents(r, "images") if e.get("id") == cli_id]
    assert cli_event["datacontenttype"] == "application/json" and "\ufffd" in cli_event["data"]

    dead = poll(
        lambda: dead_letters(r),
        lambda d: {raw_id, cli_id, *(i for i, _, _ in bad.values())} <= set(d),
        60,
        lambda: f"dead letters: {sorted(dead_letters(r))}",
    )
    for event_id in good.values():
        assert event_id not in dead
    # The raw payload: dead-lettered as it was published, and never seen by the app.
    [raw_dead] = dead[raw_id]
    assert raw_dead["raw"] == BIRD and raw_dead["metadata"]["rawPayload"] == "true"
    assert raw_id not in found
    assert "error deserializing cloud event in pubsub pubsub and topic images" in ready.stack.daprd.log()


def test_mixed_events_none_lost(ready: Ready, capsys: pytest.CaptureFixture[str]) -> None:
    """~100 events of every kind in: one result each out, the bad ones dead-lettered, nothing pending."""
    r = ready.redis
    plan: list[tuple[str, Way, tuple[str, str] | None]] = []
    for n in range(66):
        name = list(GOOD_WAYS)[n % len(GOOD_WAYS)]
        plan.append((name, GOOD_WAYS[name], None))
    for n in range(36):
        name = list(BAD_WAYS)[n % len(BAD_WAYS)]
        way, code, words = BAD_WAYS[name]
        plan.append((name, way, (code, words)))
    ids = [f"mix-{n}-{uuid.uuid4()}" for n in range(len(plan))]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: job[0][1](ready.publisher, job[1]), zip(plan, ids, strict=True)))
    found = poll(
        lambda: results(r),
        lambda found: set(ids) <= set(found),
        180,
        lambda: f"{len(set(ids) - set(results(r)))} of {len(ids)} without a result",
    )
    elapsed = time.monotonic() - started
    dead = poll(lambda: dead_letters(r), lambda d: sum(1 for i in ids if i in d) >= 36, 60, "dead letters")
    wait_for(lambda: pending(r, "images") == 0, 30, lambda: f"pending: {r.xpending('images', GROUP)}")

    duplicates = Counter({i: len(found[i]) - 1 for i in ids if len(found[i]) > 1})
    dead_duplicates = Counter({i: len(dead[i]) - 1 for i in ids if len(dead.get(i, [])) > 1})
    with capsys.disabled():
        print(
            f"\n[pubsub] {len(ids)} events in: {len(ids)} answered in {elapsed:.1f} s, "
            f"{sum(1 for i in ids if i in dead)} dead-lettered, "
            f"duplicate results {sum(duplicates.values())}, "
            f"duplicate dead letters {sum(dead_duplicates.values())}, pending 0"
        )
    for (name, _, bad), event_id in zip(plan, ids, strict=True):
        result = found[event_id][0]
        if bad is None:
            assert_classified(result)
            assert event_id not in dead, name
        else:
            assert_error(result, *bad)
            assert event_id in dead, name
    assert not duplicates and not dead_duplicates, (duplicates, dead_duplicates)


def test_readme_subscriber_gets_the_results(ready: Ready, tmp_path: Path) -> None:
    """The README's subscriber, run as written (SDK 1.19, SubscriptionMessage) beside a daprd of its own."""
    readme = (ROOT / "README.md").read_text()
    [code] = [
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "a subscriber to the results" in b
    ]
    script = tmp_path / "subscriber.py"
    script.write_text(code)
    built = ready.stack
    daprd = Daprd(
        built.workdir,
        built.resources,
        built.config,
        app_id=f"results-reader-{uuid.uuid4().hex[:8]}",
        app_health_check=False,
    )
    out = (tmp_path / "subscriber.out").open("w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "APP_"))}
    env.update(daprd.env())
    app = subprocess.Popen(
        [sys.executable, "-W", "default", str(script)], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        daprd.start()
        wait_for(
            lambda: "app is subscribed to the following topics: [[classifications]]" in daprd.log(),
            60,
            daprd.log,
        )
        good = ready.publisher.http(json_body(), "application/json", f"readme-{uuid.uuid4()}")
        bad = ready.publisher.http(NOT_AN_IMAGE, "application/octet-stream", f"readme-{uuid.uuid4()}")
        printed = poll(
            lambda: script.with_suffix(".out").read_text(),
            lambda text: good in text and bad in text,
            60,
            lambda: script.with_suffix(".out").read_text()[-2000:],
        )
        # Handler threads print concurrently: print() writes the text and the newline separately, so
        # two results can share a line. Split on the ids instead of on lines.
        lines = dict(
            re.findall(r"(readme-[0-9a-f-]{36}) (.*?)(?=readme-[0-9a-f-]{36} |\Z)", printed, flags=re.S)
        )
        assert BIRD_LABEL in lines[good] and "invalid_argument" in lines[bad]
        assert "DeprecationWarning" not in printed
    finally:
        app.terminate()
        app.wait(15)
        daprd.stop()
        out.close()


def test_streams_stay_bounded(ready: Ready, capsys: pytest.CaptureFixture[str]) -> None:
    """maxLenApprox caps `classifications` however many results are published (MAXLEN ~ trims
    whole stream nodes of 100 entries, so XLEN stays between the cap and about 100 over)."""
    r = ready.redis
    before = r.xinfo_stream("classifications")["first-entry"][0]
    count = MAX_LEN + 1500

    def one(n: int) -> int:
        body = json.dumps({"correlation_id": f"filler-{n}", "error": {"code": "test", "message": ""}})
        return ready.publisher.daprd.http(
            "POST",
            "/v1.0/publish/pubsub/classifications",
            body.encode(),
            {"Content-Type": "application/json"},
        ).status

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(count))) == {204}
    length = r.xlen("classifications")
    assert MAX_LEN <= length <= MAX_LEN + 200, length
    assert r.xinfo_stream("classifications")["first-entry"][0] != before  # the oldest were trimmed
    # A result the app publishes now goes through the same capped XADD, and the app still answers.
    event_id = ready.publisher.http(json_body(), "application/json", f"after-cap-{uuid.uuid4()}")
    found = wait_for(lambda: results(r).get(event_id), 60, "the result after the cap")
    assert_classified(found[0])
    assert r.xlen("classifications") <= MAX_LEN + 200
    with capsys.disabled():
        print(f"\n[pubsub] maxLenApprox {MAX_LEN}: {count} published, XLEN classifications {length}")
    wait_for(lambda: pending(r, "images") == 0, 30, lambda: f"pending: {r.xpending('images', GROUP)}")


# --- without the app health check: RETRY, redelivery by the resiliency policy, then dead letters ------


def test_retry_redelivers_then_dead_letters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No health check: daprd delivers at once, the app (no model yet) answers RETRY, and
    components/resiliency.yaml redelivers 8 times (~25 s) before the dead-letter topic; a bad
    data_base64 fails in daprd itself and goes the same way. Events whose model arrives within
    the budget are answered.

    Redis' reclaim loop runs every redeliverInterval (5 s in components/pubsub.yaml) while these
    events are retried: the shipped processingTimeout (60 s) must keep it from delivering them a
    second time (at the 15 s default a stranded event was attempted up to 16 times instead of 9).
    """
    with stack(tmp_path / "retry", replicas=0) as built, publisher(built) as pub:
        retry_scenario(built, pub, tmp_path, capsys)


def not_ready_answers(log: str, event_id: str) -> int:
    """How often the app answered an event RETRY for not being ready (its request log lines)."""
    return sum(
        f"event={event_id} answer=retry" in line and 'error="not ready' in line for line in log.splitlines()
    )


def retry_scenario(built: Stack, pub: Publisher, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daprd, app = built.add_replica(app_health_check=False)
    wait_for(lambda: "app is subscribed to the following topics" in daprd.log(), 60, daprd.log)
    r = built.redis.client()
    started = time.monotonic()
    stranded = pub.http(json_body(), "application/json", f"stranded-{uuid.uuid4()}")
    bad_id = f"bad-base64-{uuid.uuid4()}"
    bad_base64 = pub.http(cloudevent(bad_id, data_base64="%%% not"), "application/cloudevents+json", bad_id)
    dead = poll(
        lambda: dead_letters(r),
        lambda d: {stranded, bad_base64} <= set(d),
        120,
        lambda: f"dead letters {sorted(dead_letters(r))}\n{app.log()[-1500:]}",
    )
    to_dead_letter = time.monotonic() - started
    attempts = not_ready_answers(app.log(), stranded)
    assert attempts == 1 + MAX_RETRIES, attempts
    assert stranded not in results(r)  # RETRY publishes nothing: the requester learns nothing
    assert len(dead[stranded]) == 1 and dead[stranded][0]["id"] == stranded
    assert bad_base64 not in app.log()  # daprd could not decode it: it never reached the app

    # Now events that find no model at first, and a model arriving while they are retried.
    later = [pub.http(json_body(), "application/json", f"later-{n}-{uuid.uuid4()}") for n in range(5)]
    wait_for(lambda: all(not_ready_answers(app.log(), i) for i in later), 60, app.log)
    upload_birds(daprd, tmp_path)
    found = poll(
        lambda: results(r),
        lambda f: set(later) <= set(f),
        90,
        lambda: f"missing {set(later) - set(results(r))}\n{app.log()[-1500:]}",
    )
    for event_id in later:
        assert_classified(found[event_id][0])
        assert event_id not in dead_letters(r)
    redelivered = {i: not_ready_answers(app.log(), i) for i in later}
    wait_for(lambda: pending(r, "images") == 0, 30, "pending")
    with capsys.disabled():
        print(
            f"\n[pubsub] RETRY budget: dead-lettered after {to_dead_letter:.1f} s, {attempts} attempts; "
            f"answered after the model arrived with {sorted(redelivered.values())} not-ready attempts"
        )
