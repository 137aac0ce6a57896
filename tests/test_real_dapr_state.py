"""Models and guests in the real state store (Redis through a real daprd), start-up and
health as daprd sees them.

Everything runs as real processes (tests/real_dapr.py): redis-server, daprd 1.18 with the
project's components/*.yaml, `classifier serve`, and the `classifier` CLI as an uploader
through a sidecar of its own app id (`keyPrefix: name` makes the keys shared).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import IMAGES, MODELS, ROOT
from dapr.clients import DaprClient
from real_dapr import Daprd, Stack, sidecar_env, stack, wait_for

from service.dapr_sdk import Concurrency, StateOptions
from service.errors import ClassifierError, ErrorKind
from service.stores.dapr import CHUNK_BYTES, DaprStore

pytestmark = pytest.mark.dapr

BIRDS_DIR = MODELS / "aiy_birds_v1"
MOBILENET_DIR = MODELS / "mobilenet_v2_1.0_224_quant"
BIRDS = (BIRDS_DIR / "model.tflite").read_bytes()
MOBILENET = (MOBILENET_DIR / "model.tflite").read_bytes()
MOBILENET_V1 = (MODELS / "mobilenet_v1_0.25_224_quant_with_metadata" / "model.tflite").read_bytes()
MOBILENET_V1_FLOAT = (MODELS / "mobilenet_v1_0.25_224_float" / "model.tflite").read_bytes()
BIRD_LABELS = set((BIRDS_DIR / "labels.txt").read_text().splitlines())
MOBILENET_LABELS = set((MOBILENET_DIR / "labels.txt").read_text().splitlines())
BIRD_JPG = (IMAGES / "classify" / "bird.jpg").read_bytes()
GUEST = (ROOT / "wasm" / "bin" / "classify.wasm").read_bytes()
PREFIX = "statestore||"  # keyPrefix: name


def big_guest(size: int = 5 << 20) -> bytes:
    """The default guest with a custom section of `size` bytes: valid wasm, over 4 MiB."""
    name = b"padding"
    payload = bytes([len(name)]) + name + b"\0" * size
    length, leb = len(payload), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        leb.append(byte | (0x80 if length else 0))
        if not length:
            break
    return GUEST + b"\x00" + bytes(leb) + payload


def cli(daprd: Daprd, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The `classifier` command with the sidecar of `daprd` (as `dapr run -- classifier ...`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))}
    env.update({k: v for k, v in daprd.env().items() if k.startswith("DAPR_")})
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_chunked(redis: Any, key: str, data: bytes) -> dict[str, Any]:
    """The manifest at `key` and its chunks in Redis: whole, 1 MiB each at most. The manifest."""
    manifest = json.loads(redis.hget(PREFIX + key, "data"))
    digest = hashlib.sha256(data).hexdigest()
    assert (manifest["sha256"], manifest["size"]) == (digest, len(data))
    count = -(-len(data) // CHUNK_BYTES)
    assert manifest["chunks"] == count and manifest["chunk_prefix"].startswith(digest[:16] + "-")
    chunks = [redis.hget(f"{PREFIX}{key}/{manifest['chunk_prefix']}/{i}", "data") for i in range(count)]
    assert all(c is not None and len(c) <= CHUNK_BYTES for c in chunks), [len(c or b"") for c in chunks]
    assert b"".join(chunks) == data
    return manifest


def classify_through(daprd: Daprd, model: str = "birds") -> dict[str, Any]:
    answer = daprd.invoke("classify", BIRD_JPG, f"model={model}", app_id="image-classifier")
    assert answer.status == 200, answer
    return answer.json()


# -- chunks, bulk get, a guest over 4 MiB ------------------------------------------------------


def test_models_and_guests_go_through_the_sidecar_as_a_manifest_and_1_mib_chunks(tmp_path: Path) -> None:
    guest = big_guest()
    assert len(guest) > 4 << 20  # over daprd's default --max-body-size and gRPC's 4 MiB
    with stack(tmp_path, CLASSIFIER_GUEST="big") as s:
        uploader = s.add_sidecar("uploader")
        put = cli(uploader, "guests", "put", "big", str(_write(tmp_path / "big.wasm", guest)))
        assert put.returncode == 0 and "stored guest big version 1" in put.stdout, put.stderr
        put = cli(
            uploader,
            "models",
            "put",
            "birds",
            str(BIRDS_DIR / "model.tflite"),
            "--labels",
            str(BIRDS_DIR / "labels.txt"),
        )
        assert put.returncode == 0 and "stored birds version 1" in put.stdout, put.stderr

        redis = s.redis.client()
        manifest = check_chunked(redis, "model/birds", BIRDS)
        assert manifest["chunks"] == 4 and len(manifest["labels"]) == 965
        assert check_chunked(redis, "guest/big", guest)["chunks"] == 6
        assert json.loads(redis.hget(PREFIX + "models", "data")) == ["birds"]
        assert json.loads(redis.hget(PREFIX + "guests", "data")) == ["big"]

        # The service fetched both by bulk get (3 chunks a call), verified them, and runs the big guest.
        s.app.wait_ready()
        result = classify_through(s.daprd)
        assert (result["model"], result["version"]) == ("birds", 1)
        assert result["predictions"][0]["label"] == "Aix galericulata"
        models = s.daprd.invoke("models").json()
        assert models["guest"]["name"] == "big"
        assert models["guest"]["sha256"] == hashlib.sha256(guest).hexdigest()

        # A second reader with an empty cache gets the same bytes through real bulk gets.
        with sidecar_env(uploader), DaprClient(max_grpc_message_length=16 << 20) as client:
            reader = DaprStore(client, tmp_path / "reader")
            assert reader.get("birds").model_path.read_bytes() == BIRDS
            assert reader.get_guest("big").wasm == guest


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- etags: what Redis through daprd does, and uploads racing on one name -----------------------


def commit_read(key: str) -> int:
    """Which read of `key` a put makes right before it commits: a manifest is read first to see
    whether the upload is already stored, then again to commit; the names index only to commit."""
    return 1 if key in ("models", "guests") else 2


class RacingStore(DaprStore):
    """A DaprStore whose commit read of `key` waits at `barrier` until the other uploader has
    made it too: both then commit against the same manifest, a race that always happens."""

    def __init__(self, client: DaprClient, cache: Path, key: str, barrier: threading.Barrier) -> None:
        super().__init__(client, cache)
        self.key, self.barrier, self.reads = key, barrier, 0

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = super()._call(method, *args, **kwargs)
        if method == self.client.get_state and args[1] == self.key:
            self.reads += 1
            if self.reads == commit_read(self.key):
                self.barrier.wait(60)
        return result


def race(sidecars: list[Daprd], tmp: Path, key: str, puts: list[Callable[[DaprStore], Any]]) -> list[Any]:
    """Run each put on a RacingStore of its own sidecar at the same time; their results."""
    barrier = threading.Barrier(len(puts))

    def run(i: int) -> Any:
        with sidecar_env(sidecars[i]), DaprClient() as client:
            store = RacingStore(client, tmp / f"racer-{i}", key, barrier)
            return puts[i](store), store.reads

    with ThreadPoolExecutor(len(puts)) as pool:
        return list(pool.map(run, range(len(puts))))


def test_redis_etag_rules_through_daprd(tmp_path: Path) -> None:
    """What the daprd double now models (tests/daprd.py _check_etag)."""
    first_write = StateOptions(concurrency=Concurrency.first_write)
    with stack(tmp_path, replicas=0) as s:
        sidecar = s.add_sidecar("rules")
        with sidecar_env(sidecar), DaprClient() as client:
            client.save_state("statestore", "plain", b"1")
            client.save_state("statestore", "plain", b"2", options=first_write)  # no first-write flag yet
            client.save_state("statestore", "fw", b"1", options=first_write)
            with pytest.raises(grpc.RpcError) as exists:
                client.save_state("statestore", "fw", b"2", options=first_write)
            assert exists.value.code().name == "INTERNAL" and "failed to set key" in exists.value.details()
            with pytest.raises(grpc.RpcError) as stale:
                client.save_state("statestore", "fw", b"2", etag="7", options=first_write)
            assert stale.value.code().name == "ABORTED"
            client.save_state(
                "statestore", "new", b"1", etag="5", options=first_write
            )  # missing key: created
            assert client.get_state("statestore", "new").etag == "1"
        assert s.redis.client().hget(PREFIX + "fw", "first-write") == b"0"


def test_uploads_racing_on_one_name_end_as_consecutive_whole_versions(tmp_path: Path) -> None:
    with stack(tmp_path, replicas=0) as s:
        sidecars = [s.add_sidecar("uploader-a"), s.add_sidecar("uploader-b")]
        redis = s.redis.client()
        # Round 2 uploads other bytes than round 1 left as the current version: a put of what is
        # already current stores nothing (and would not race).
        rounds = {1: {0: BIRDS, 1: MOBILENET}, 2: {0: MOBILENET_V1, 1: MOBILENET_V1_FLOAT}}
        for round_ in (1, 2):  # a new name (no manifest yet), then an existing one
            models = rounds[round_]
            results = race(
                sidecars,
                tmp_path / f"r{round_}",
                "model/race",
                [lambda st, m=models[i]: st.put("race", m).version for i in range(2)],
            )
            versions = sorted(v for v, _ in results)
            assert versions == [2 * round_ - 1, 2 * round_], results  # one each, no version twice
            reads = sorted(reads for _, reads in results)
            first = commit_read("model/race")
            assert reads[0] == first and reads[1] >= first + 1, results  # the loser re-read, then committed
            winner = max(range(2), key=lambda i: results[i][0])
            manifest = check_chunked(redis, "model/race", models[winner])
            assert manifest["version"] == 2 * round_
            with sidecar_env(sidecars[0]), DaprClient() as client:
                stored = DaprStore(client, tmp_path / f"check-{round_}").get("race")
            assert stored.model_path.read_bytes() == models[winner]

        guests = {0: GUEST, 1: big_guest(1 << 20)}
        results = race(
            sidecars,
            tmp_path / "g",
            "guest/race",
            [lambda st, g=guests[i]: st.put_guest("race", g).version for i in range(2)],
        )
        assert sorted(v for v, _ in results) == [1, 2]
        winner = max(range(2), key=lambda i: results[i][0])
        check_chunked(redis, "guest/race", guests[winner])

        # Two names created at once: both end up in the index (it was last-write-wins before).
        results = race(
            sidecars,
            tmp_path / "i",
            "guests",
            [lambda st: st.put_guest("alpha", GUEST).version, lambda st: st.put_guest("beta", GUEST).version],
        )
        assert json.loads(redis.hget(PREFIX + "guests", "data")) == ["alpha", "beta", "race"]


# -- hot update: polling and the model-updates topic, two replicas --------------------------------


def _upload(daprd: Daprd, tmp: Path, name: str, model: bytes, labels: Path) -> int:
    """DaprStore.put without the CLI's announcement: only polling can see it."""
    with sidecar_env(daprd), DaprClient() as client:
        return DaprStore(client, tmp).put(name, model, labels.read_text().splitlines()).version


def _consistent(result: dict[str, Any]) -> bool:
    """A request finished on one version: its labels are that version's model's."""
    labels = {p["label"] for p in result["predictions"]}
    return labels <= (BIRD_LABELS if result["version"] == 1 else MOBILENET_LABELS)


def _replaced(s: Stack) -> bool:
    return all("model birds: version 2 replaces 1" in app.log() for _, app in s.replicas)


def test_both_replicas_take_a_new_version_by_polling(tmp_path: Path) -> None:
    with stack(tmp_path, replicas=2) as s:
        caller = s.add_sidecar("caller")
        _upload(caller, tmp_path / "up", "birds", BIRDS, BIRDS_DIR / "labels.txt")
        for _, app in s.replicas:
            app.wait_ready()
        assert classify_through(caller)["version"] == 1
        _upload(caller, tmp_path / "up", "birds", MOBILENET, MOBILENET_DIR / "labels.txt")
        wait_for(lambda: _replaced(s), 60, "both replicas replacing birds v1 by v2 (CLASSIFIER_POLL_S=0.5)")
        answers = [classify_through(caller) for _ in range(12)]
        assert {a["version"] for a in answers} == {2} and all(map(_consistent, answers))


def test_the_update_topic_reaches_both_replicas_and_requests_in_flight_finish_on_their_version(
    tmp_path: Path,
) -> None:
    # Polling off (an hour): only the model-updates event can bring v2 in quickly.
    with stack(tmp_path, replicas=2, CLASSIFIER_POLL_S="3600") as s:
        caller = s.add_sidecar("caller")
        _upload(caller, tmp_path / "up", "birds", BIRDS, BIRDS_DIR / "labels.txt")
        for _, app in s.replicas:
            app.wait_ready()

        answers: list[dict[str, Any]] = []
        failures: list[Any] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                answer = caller.invoke("classify", BIRD_JPG, "model=birds", app_id="image-classifier")
                (answers.append(answer.json()) if answer.status == 200 else failures.append(answer))

        with ThreadPoolExecutor(3) as pool:
            for _ in range(3):
                pool.submit(load)
            try:
                wait_for(lambda: len(answers) >= 10, 60, "answers before the update")
                put = cli(
                    caller,
                    "models",
                    "put",
                    "birds",
                    str(MOBILENET_DIR / "model.tflite"),
                    "--labels",
                    str(MOBILENET_DIR / "labels.txt"),
                )
                assert put.returncode == 0 and "stored birds version 2" in put.stdout, put.stderr
                wait_for(lambda: _replaced(s), 60, "both replicas taking v2 from the model-updates event")
                swapped = len(answers)
                wait_for(lambda: len(answers) >= swapped + 10, 60, "answers after the update")
            finally:
                stop.set()
        assert not failures, failures[:3]
        assert all(map(_consistent, answers)), [a for a in answers if not _consistent(a)][:3]
        assert {a["version"] for a in answers[:10]} == {1} and {a["version"] for a in answers[-5:]} == {2}
        for daprd, _ in s.replicas:  # each replica's daprd delivered the update (a group per daprd)
            assert 'component="updates"' in daprd.metrics()


# -- start-up and health as daprd sees them -----------------------------------------------------


def _probes(daprd: Daprd) -> int:
    return daprd.log().count("App health probe could not complete")


def _app_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.strip() and "XNNPACK" not in line]


def test_while_no_model_is_uploaded_daprd_refuses_calls_holds_events_and_the_log_stays_quiet(
    tmp_path: Path,
) -> None:
    with stack(tmp_path) as s:
        wait_for(lambda: _probes(s.daprd) >= 8, 60, "8 failed health probes")
        probe = [
            line for line in s.daprd.log().splitlines() if "App health probe could not complete" in line
        ][-1]
        assert "code = Unavailable" in probe and "no model in the store yet" in probe, probe
        answer = s.daprd.invoke("models")
        assert answer.status == 500 and "app is not in a healthy state" in answer.json()["message"], answer

        # One line per state change, no traceback per probe.
        log = s.app.log()
        assert "Traceback" not in log and "HealthCheck failed" not in log, log[-3000:]
        assert log.count("waiting for a model") == 1, log
        assert len(_app_lines(log)) <= 6, log

        # Pub/sub is paused while unhealthy: daprd has not even joined the images stream's group.
        image = json.dumps({"image_base64": base64.b64encode(BIRD_JPG).decode(), "model": "birds"}).encode()
        published = s.daprd.publish("images", image, "application/json", metadata={"cloudevent.id": "early"})
        assert published.status == 204, published
        redis = s.redis.client()
        probes = _probes(s.daprd)
        wait_for(lambda: _probes(s.daprd) >= probes + 3, 30, "3 more probes")
        assert redis.xlen("images") == 1 and not _groups(redis, "images")

        put = cli(
            s.daprd,
            "models",
            "put",
            "birds",
            str(BIRDS_DIR / "model.tflite"),
            "--labels",
            str(BIRDS_DIR / "labels.txt"),
        )
        assert put.returncode == 0, put.stderr
        s.app.wait_ready()
        result = wait_for(lambda: _result(redis, "early"), 60, "the held event's result")
        assert result["predictions"][0]["label"] == "Aix galericulata"
        assert classify_through(s.daprd)["version"] == 1


def _groups(redis: Any, stream: str) -> list[Any]:
    try:
        return redis.xinfo_groups(stream)
    except Exception:  # no such stream
        return []


def _result(redis: Any, event_id: str) -> dict[str, Any] | None:
    for _, fields in redis.xrange("classifications"):
        data = json.loads(fields[b"data"])["data"]
        if data.get("correlation_id") == event_id:
            return data
    return None


def test_with_redis_down_at_start_up_daprd_exits_and_the_app_waits_quietly(tmp_path: Path) -> None:
    with stack(tmp_path, replicas=0, persistent_redis=True) as s:
        s.redis.stop()
        with pytest.raises(AssertionError) as failed:  # daprd: components must init
            s.add_replica()
        assert "INIT_COMPONENT_FAILURE" in str(failed.value) and "connection refused" in str(failed.value)
        assert not s.replicas

        s.redis.start()
        daprd, app = s.add_replica()
        _upload(daprd, tmp_path / "up", "birds", BIRDS, BIRDS_DIR / "labels.txt")
        app.wait_ready()

        # daprd up, Redis down, the app (re)starting: it waits, saying why, once.
        app.terminate()
        s.redis.stop()
        app.start()
        wait_for(lambda: "waiting for the state store" in app.log(), 60, "the app noticing the store is down")
        before = _probes(daprd)
        wait_for(lambda: _probes(daprd) >= before + 5, 60, "5 failed probes")
        probe = [line for line in daprd.log().splitlines() if "App health probe could not complete" in line][
            -1
        ]
        assert "code = Unavailable" in probe and "connection refused" in probe, probe
        answer = daprd.invoke("models")
        assert answer.status == 500 and "app is not in a healthy state" in answer.body.decode(), answer
        restart_log = app.log().rsplit("listening on", 1)[-1]
        assert "Traceback" not in restart_log and restart_log.count("waiting for the state store") == 1, (
            restart_log
        )

        s.redis.start()  # the app recovers by itself: the store error was transient
        app.wait_ready()
        assert classify_through(daprd)["version"] == 1
        assert "start-up failed" not in app.log()


def test_a_chunk_redis_cannot_read_is_unavailable_naming_the_chunk(tmp_path: Path) -> None:
    """A key Redis holds as another type (here a list) fails alone in a bulk get: daprd answers
    that item with an error (state/bulk.go DoBulkGet), which the store reports with its key."""
    with stack(tmp_path, replicas=0) as s:
        sidecar = s.add_sidecar("reader")
        with sidecar_env(sidecar), DaprClient() as client:
            manifest = DaprStore(client, tmp_path / "uploader").put("birds", BIRDS)
            redis = s.redis.client()
            record = json.loads(redis.hget(PREFIX + "model/birds", "data"))
            chunk = f"model/birds/{record['chunk_prefix']}/1"
            redis.delete(PREFIX + chunk)
            redis.rpush(PREFIX + chunk, b"not a state item")
            with pytest.raises(ClassifierError) as exc:
                DaprStore(client, tmp_path / "reader").get("birds")
            assert exc.value.kind == ErrorKind.UNAVAILABLE
            assert exc.value.message.startswith(
                f"model 'birds' version {manifest.version}: reading {chunk}: "
            )
            assert "WRONGTYPE" in exc.value.message
            # An illegal key, though, fails the whole bulk get (what the daprd double does too).
            with pytest.raises(grpc.RpcError) as illegal:
                client.get_bulk_state("statestore", [chunk, "a||b"])
            assert illegal.value.code() == grpc.StatusCode.INVALID_ARGUMENT
