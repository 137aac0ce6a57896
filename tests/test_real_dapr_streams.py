"""Streams through the real daprd 1.18 and Redis: `classifier publish --video/--frames` lands every frame
on the images topic (read back from Redis), `classifier results` follows the results topic with a
streaming subscription (no app port: SubscribeTopicEventsAlpha1) and prints each stream in seq order,
once each; and a video through `classifier serve` comes back classified, in order.

The `results` tests publish result events to the results topic themselves, out of order and twice, as a
service replica and a redelivery would: `results` is a consumer of that topic, and this is what it sees.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IMAGES, MODELS, ROOT
from dapr.clients import DaprClient
from PIL import Image
from real_dapr import Daprd, Stack, sidecar_env, stack, wait_for

from service.stores.dapr import DaprStore

sys.path.insert(0, str(ROOT))  # bench/ is not part of the installed package
from bench.decoders import make_clip

pytestmark = pytest.mark.dapr
CLASSIFIER = [sys.executable, "-m", "service"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    make_clip(path, 12, 160, 120, rate=24)
    return path


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[tuple[Stack, Daprd]]:
    """Redis and one daprd with no app: a camera's or a viewer's sidecar."""
    with stack(tmp_path, replicas=0) as built:
        yield built, built.add_sidecar(f"streams-{uuid.uuid4().hex[:6]}")


def command_env(daprd: Daprd) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_"))}
    return {**env, **{k: v for k, v in daprd.env().items() if k.startswith("DAPR_")}}


def classifier(
    daprd: Daprd, *argv: str | Path, timeout: float = 120, cwd: Path = ROOT, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLASSIFIER, *map(str, argv)],
        env={**command_env(daprd), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def image_events(built: Stack) -> list[dict]:
    return [json.loads(fields[b"data"]) for _, fields in built.redis.client().xrange("images")]


def test_publish_video_lands_every_frame_once_with_the_stream_fields(bare, clip: Path) -> None:
    built, daprd = bare
    before = time.time()
    done = classifier(
        daprd, "publish", "--video", clip, "--fps", "30", "--stream-id", "cam-1", "--max-frames", 10
    )
    after = time.time()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("published 10 frames of stream cam-1 to pubsub/images in "), done.stdout
    assert "publishing" in done.stderr and "Traceback" not in done.stderr
    events = image_events(built)
    assert sorted(e["data"]["seq"] for e in events) == list(range(10))  # each once, the 10 asked for
    for event in events:
        data = event["data"]
        assert event["datacontenttype"] == "application/json" and event["id"] == f"cam-1:{data['seq']}"
        assert data["stream_id"] == "cam-1" and before <= data["captured_at"] <= after
        assert set(data) == {"image_base64", "stream_id", "seq", "captured_at"}
    by_seq = sorted(events, key=lambda e: e["data"]["seq"])
    stamps = [e["data"]["captured_at"] for e in by_seq]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 0.2  # paced (0.3 s at 30/s), not a burst
    first = Image.open(io.BytesIO(base64.b64decode(by_seq[0]["data"]["image_base64"])))
    assert (first.format, first.size) == ("JPEG", (160, 120))


def test_publish_frames_dir_and_model_fields(bare, tmp_path: Path) -> None:
    built, daprd = bare
    folder = tmp_path / "frames"
    folder.mkdir()
    shared = [IMAGES / "classify" / n for n in ("bird.jpg", "sparrow.png", "burger.jpg")]
    for index, image in enumerate(shared):
        (folder / f"{index:03d}{image.suffix}").write_bytes(image.read_bytes())
    done = classifier(daprd, "publish", "--frames", folder, "--fps", "20", "--model", "birds", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    [stream_id] = {e["data"]["stream_id"] for e in image_events(built)}
    assert stream_id.startswith("frames-") and f"stream {stream_id} " in done.stdout
    by_seq = sorted((e["data"] for e in image_events(built)), key=lambda d: d["seq"])
    assert [base64.b64decode(d["image_base64"]) for d in by_seq] == [p.read_bytes() for p in shared]
    assert {(d["model"], d["top_k"]) for d in by_seq} == {("birds", 2)}


def test_ctrl_c_stops_publishing_with_a_summary_of_what_was_published(bare, clip: Path) -> None:
    built, daprd = bare
    process = subprocess.Popen(
        [*CLASSIFIER, "publish", "--video", str(clip), "--fps", "2", "--stream-id", "slow"],
        env=command_env(daprd),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(image_events(built)) >= 2, 60, "two frames published")
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    published = len(image_events(built))
    assert process.returncode == 130 and "Traceback" not in err, err
    assert 2 <= published < 12
    assert out.startswith(
        f"interrupted after publishing {published} frames of stream slow to pubsub/images in "
    )


def test_publish_without_a_sidecar_is_one_line(tmp_path: Path, clip: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAPR_")}
    env.update(DAPR_GRPC_PORT="1", DAPR_HTTP_PORT="1", DAPR_HEALTH_TIMEOUT="1")
    done = subprocess.run(
        [*CLASSIFIER, "publish", "--video", str(clip)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1 and "sidecar" in done.stderr, (
        done.stderr
    )


def result(stream_id: str | None, seq: int | None, label: str = "Aix galericulata", **extra: object) -> bytes:
    body: dict[str, object] = {
        "correlation_id": f"{stream_id}:{seq}",
        "model": "birds",
        "version": 1,
        "predictions": [{"index": 166, "label": label, "score": 0.7265625}],
        **extra,
    }
    if stream_id is not None:
        body.update(
            stream_id=stream_id, seq=seq, captured_at=time.time(), capture_latency_ms=40.0 + (seq or 0)
        )
    return json.dumps(body).encode()


class Follower:
    """`classifier results ...` running, its stdout read line by line as it comes."""

    def __init__(self, daprd: Daprd, *argv: str) -> None:
        self.process = subprocess.Popen(
            [*CLASSIFIER, "results", *argv],
            env=command_env(daprd),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe, into: list[str]) -> None:
        for line in pipe:
            into.append(line.rstrip("\n"))

    def wait_line(self, words: str, timeout: float = 60) -> None:
        wait_for(
            lambda: any(words in line for line in self.lines + self.err),
            timeout,
            lambda: f"{words!r} from results: {self.lines} {self.err}",
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(30)
        for reader in self.readers:  # until the pipes' ends: every line read
            reader.join(10)
        return code


def test_results_follow_prints_each_stream_in_seq_order_once(bare) -> None:
    _, daprd = bare
    follower = Follower(daprd, "--stream-id", "cam-1", "--follow", "--wait", "1")
    try:
        follower.wait_line("following pubsub/classifications for stream cam-1")
        # out of order, duplicates (a redelivery), another stream, a single image's result, a gap at 7
        for stream_id, seq in [
            ("cam-1", 0), ("cam-1", 2), ("cam-1", 1), ("cam-1", 1), ("cam-2", 0), (None, None),
            ("cam-1", 3), ("cam-1", 5), ("cam-1", 4), ("cam-1", 0), ("cam-1", 6), ("cam-1", 8),
        ]:  # fmt: skip
            assert daprd.publish("classifications", result(stream_id, seq), "application/json").status == 204
        follower.wait_line("cam-1 #8:")
        # seq 7 after it was skipped: too late, dropped (the lines stay in seq order)
        assert daprd.publish("classifications", result("cam-1", 7), "application/json").status == 204
        assert daprd.publish("classifications", result("cam-1", 9), "application/json").status == 204
        follower.wait_line("cam-1 #9:")
    finally:
        code = follower.stop()
    expected = [f"cam-1 #{seq}: Aix galericulata 0.727, {40 + seq} ms after capture" for seq in range(7)]
    expected += ["cam-1 #7: skipped, not received in time"]
    expected += [f"cam-1 #{seq}: Aix galericulata 0.727, {40 + seq} ms after capture" for seq in (8, 9)]
    assert follower.lines == expected
    assert code == 130
    assert follower.err[-1] == "results: 9 printed, 1 skipped, 3 duplicates dropped (interrupted)", (
        follower.err
    )


def test_results_of_every_stream_then_stops_when_idle(bare) -> None:
    built, daprd = bare
    for stream_id, seq in [("cam-b", 1), ("cam-a", 0), ("cam-b", 0), (None, None), ("cam-a", 1)]:
        assert daprd.publish("classifications", result(stream_id, seq), "application/json").status == 204
    # published before the viewer started: a new consumer group reads what the topic holds
    # --wait 3: daprd 1.18.3 may deliver the first messages before the streaming subscription is
    # registered ("no streamer subscribed"), then redelivers them per the resiliency policy (~0.5 s)
    done = classifier(daprd, "results", "--idle", "5", "--wait", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(lines) == sorted(
        [
            "cam-b #0: Aix galericulata 0.727, 40 ms after capture",
            "cam-b #1: Aix galericulata 0.727, 41 ms after capture",
            "cam-a #0: Aix galericulata 0.727, 40 ms after capture",
            "cam-a #1: Aix galericulata 0.727, 41 ms after capture",
            "None:None: Aix galericulata 0.727",
        ]
    )
    assert lines.index("cam-b #0: Aix galericulata 0.727, 40 ms after capture") < lines.index(
        "cam-b #1: Aix galericulata 0.727, 41 ms after capture"
    )
    assert (
        done.stderr.splitlines()[-1] == "results: 5 printed, 0 skipped, 0 duplicates dropped (none for 5 s)"
    )
    # --json prints the results as published, --count stops after that many. Another viewer (app id:
    # consumer group) reads the topic from its beginning again. (Not this viewer's sidecar again: after a
    # streaming subscription ends, daprd 1.18's Redis reader may still take the next message, fail it
    # with "context canceled" and leave it pending until processingTimeout, 60 s, has passed.)
    other = built.add_sidecar("streams-other-viewer")
    done = classifier(other, "results", "--json", "--count", "1", "--stream-id", "cam-a", "--wait", "3")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == {**json.loads(result("cam-a", 0)), "captured_at": printed["captured_at"]}
    assert done.stderr.splitlines()[-1] == "results: 1 printed, 0 skipped, 0 duplicates dropped (1 printed)"


def upload_birds(daprd: Daprd, workdir: Path) -> None:
    model = MODELS / "aiy_birds_v1"
    with sidecar_env(daprd), DaprClient() as client:
        DaprStore(client, workdir / "uploader-cache").put(
            "birds", (model / "model.tflite").read_bytes(), (model / "labels.txt").read_text().splitlines()
        )


@pytest.mark.parametrize("bulk", ["on", "off"])
def test_a_video_through_serve_comes_back_classified_in_order(tmp_path: Path, bulk: str) -> None:
    """publish --video -> daprd -> Redis -> classifier serve -> results topic -> results --stream-id."""
    clip = tmp_path / "birds.mp4"
    make_clip(clip, 20, 224, 224, rate=30)
    with stack(tmp_path, CLASSIFIER_BULK_SUBSCRIBE=bulk) as built:
        upload_birds(built.daprd, tmp_path)
        built.app.wait_ready()
        camera = built.add_sidecar("camera")
        viewer = built.add_sidecar("viewer")
        follower = Follower(viewer, "--stream-id", "cam", "--follow", "--wait", "10")
        try:
            follower.wait_line("following pubsub/classifications")
            done = classifier(
                camera, "publish", "--video", clip, "--fps", "20", "--stream-id", "cam", "--model", "birds"
            )
            assert done.returncode == 0, done.stderr
            follower.wait_line("cam #19:", timeout=180)
        finally:
            follower.stop()
    assert [line.split(":")[0] for line in follower.lines] == [f"cam #{seq}" for seq in range(20)]
    assert all("ms after capture" in line and "error" not in line for line in follower.lines), follower.lines


STREAMS_DOC = ROOT / "docs" / "streams.md"


def shown_sessions() -> list[tuple[str, list[str]]]:
    """docs/streams.md "From the command line": each `$ classifier ...` and the lines shown under it."""
    section = STREAMS_DOC.read_text().split("## From the command line\n", 1)[1].split("\n## ", 1)[0]
    sessions: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                sessions.append((line[2:], []))
            else:
                sessions[-1][1].append(line)
    return sessions


def masked(lines: list[str]) -> list[str]:
    """The lines with what varies from run to run (times, rates, latencies from capture) as N."""
    varying = re.compile(r"\d+\.\d s|\d+\.\d frames/s|\d+ ms after")
    return [varying.sub(lambda m: re.sub(r"[\d.]+", "N", m[0]), line) for line in lines]


def stream_results(built: Stack, stream_id: str) -> set[int]:
    seqs = set()
    for _, fields in built.redis.client().xrange("classifications"):
        data = json.loads(fields[b"data"]).get("data", {})
        if isinstance(data, dict) and data.get("stream_id") == stream_id:
            seqs.add(data["seq"])
    return seqs


def test_the_commands_in_docs_streams_run_as_shown(tmp_path: Path) -> None:
    """Each command as shown, in the shell of a sidecar; stderr's first line before stdout, its last after
    (as a terminal shows them). Each `publish` is waited for (all its results on the topic) before the
    next command, so that `results` reads them as classified, not the machine's load."""
    sessions = shown_sessions()
    assert [command.split()[1] for command, _ in sessions] == ["publish", "results", "publish"]
    make_clip(tmp_path / "clip.mp4", 20, 640, 480)
    with stack(tmp_path / "stack") as built:
        upload_birds(built.daprd, tmp_path)
        built.app.wait_ready()
        sidecar = built.add_sidecar("camera")
        for command, shown in sessions:
            argv = [str(tmp_path / "clip.mp4") if a == "clip.mp4" else a for a in shlex.split(command)[1:]]
            done = classifier(sidecar, *argv)
            assert done.returncode == 0, (command, done.stderr)
            err = done.stderr.splitlines()
            printed = [*err[:1], *done.stdout.splitlines(), *err[1:]]
            printed = [line.replace(str(tmp_path / "clip.mp4"), "clip.mp4") for line in printed]
            assert masked(printed) == masked(shown), "\n".join([f"$ {command}", *printed])
            if argv[0] == "publish":
                stream_id = argv[argv.index("--stream-id") + 1]
                frames = int(re.search(r"published (\d+) frames", done.stdout)[1])
                wait_for(
                    lambda s=stream_id, n=frames: len(stream_results(built, s)) == n,
                    120,
                    f"{stream_id} classified",
                )


def test_results_skips_what_is_not_a_result_and_prints_single_results_as_json(bare) -> None:
    """Anything on the topic that is not a JSON object is acknowledged and skipped; a result of no stream
    is printed as it comes, with --json as published."""
    _, daprd = bare
    for data, content_type in [
        (b"not json at all", "text/plain"),
        (b"[1, 2, 3]", "application/json"),
        (result(None, None), "application/json"),
    ]:
        assert daprd.publish("classifications", data, content_type).status == 204
    done = classifier(daprd, "results", "--json", "--count", "1", "--wait", "3")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(result(None, None))
    assert done.stderr.splitlines()[-1] == "results: 1 printed, 0 skipped, 0 duplicates dropped (1 printed)"


def test_results_from_a_pubsub_the_sidecar_has_not_is_one_line(bare) -> None:
    _, daprd = bare
    done = classifier(daprd, "results", CLASSIFIER_PUBSUB="nosuch")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "classifier: cannot subscribe to nosuch/classifications: "
        "dapr_pubsub_not_found: pubsub nosuch is not found\n"
    )


def test_publish_to_a_pubsub_the_sidecar_has_not_says_daprds_reason(bare, tmp_path: Path) -> None:
    """The same failure as tests/test_streams_sources.py's through the daprd double, with the same
    line: daprd's ErrorInfo reason (DAPR_PUBSUB_NOT_FOUND) and message, which the double copies."""
    _, daprd = bare
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "00.jpg").write_bytes((IMAGES / "classify" / "bird.jpg").read_bytes())
    done = classifier(
        daprd, "publish", "--frames", folder, "--fps", "0", "--stream-id", "s", CLASSIFIER_PUBSUB="nosuch"
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "classifier: not published: frame 0: dapr_pubsub_not_found: pubsub nosuch is not found"
    ), done.stderr


def test_results_when_the_sidecar_goes_away_is_one_line(bare) -> None:
    _, daprd = bare
    follower = Follower(daprd, "--follow")
    try:
        follower.wait_line("following pubsub/classifications for every stream")
        daprd.stop()
        code = follower.process.wait(120)
    finally:
        follower.stop()
    assert code == 1
    assert follower.lines == []  # nothing on stdout but results: not the SDK's health probes either
    assert (
        follower.err
        == [  # the SDK reconnects, finds no sidecar within DAPR_HEALTH_TIMEOUT (5 s): one line
            "following pubsub/classifications for every stream",
            "classifier: the subscription to classifications failed: "
            "Dapr health check timed out, after 5.0.; "
            f"is the Dapr sidecar (DAPR_GRPC_PORT={daprd.env()['DAPR_GRPC_PORT']}) still running?",
        ]
    )


def test_the_page_over_a_sidecar_that_refuses_its_subscription_is_one_line(bare, tmp_path: Path) -> None:
    """`classifier ui` in a sidecar's shell follows the results topic for its stream view: a pub/sub
    the sidecar has not is one line and exit 1, before the page is served."""
    _, daprd = bare
    done = classifier(daprd, "ui", "--port", "0", cwd=tmp_path, CLASSIFIER_PUBSUB="nosuch")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "classifier: cannot subscribe to nosuch/classifications: "
        "dapr_pubsub_not_found: pubsub nosuch is not found\n"
    )
