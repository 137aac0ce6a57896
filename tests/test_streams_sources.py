"""Stream sources and results order, without Dapr: videos decoded by PyAV (made here from ../shared
images), folders of images, the publisher's schedule and in-flight bound, and the reorder buffer of
`classifier results`.
Through the real daprd and Redis: tests/test_real_dapr_streams.py."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import IMAGES, ROOT, read_terminal
from daprd import FakeDaprd
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from service.cli import main
from service.errors import ClassifierError, ErrorKind
from service.streams.follow import Emitted, ReorderBuffer, describe, stream_fields
from service.streams.publisher import PublishSummary, StreamOptions, frame_event, publish_stream
from service.streams.video import folder_source, frame_size, video_source

sys.path.insert(0, str(ROOT))  # bench/ is not part of the installed package
from bench.decoders import make_clip

CLASSIFIER = Path(sys.executable).with_name("classifier")  # the console script of this install


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    make_clip(path, 12, 160, 120, rate=24)
    return path


# --- sources -------------------------------------------------------------------------------------------


def test_a_video_gives_every_frame_as_jpeg_in_order(clip: Path) -> None:
    source = video_source(clip)
    assert source.rate == 24
    frames = list(source.frames)
    assert len(frames) == 12
    assert all(f.startswith(b"\xff\xd8") for f in frames)  # JPEG
    assert {frame_size(f) for f in frames} == {(160, 120)}
    # the clip cycles through the shared JPEGs: frame 0 and the one after a full cycle look alike,
    # frames 0 and 1 (two different photos) do not
    pictures = len(list((IMAGES / "classify").glob("*.jpg")))
    first, second, again = (Image.open(io.BytesIO(frames[i])).convert("L") for i in (0, 1, pictures))
    assert _mean_difference(first, again) < 8 < _mean_difference(first, second)


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def test_bad_videos_are_one_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as container:  # a video stream with no frame in it
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = 64, 48
        container.start_encoding()
    no_frames = tmp_path / "no-frames.avi"
    with av.open(str(no_frames), "w") as container:  # a stream and its header, and no frame after it
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        container.start_encoding()
    sound = tmp_path / "sound.mka"
    with av.open(str(sound), "w") as container:  # audio only
        audio = container.add_stream("pcm_s16le", rate=8000)
        for _ in range(3):
            frame = av.AudioFrame(format="s16", layout="mono", samples=800)
            frame.sample_rate = 8000
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    cases = {
        text: (ErrorKind.INVALID_ARGUMENT, "not a video PyAV can decode"),
        tmp_path / "missing.mp4": (ErrorKind.NOT_FOUND, "no such file"),
        tmp_path: (ErrorKind.INVALID_ARGUMENT, "is a directory"),
        empty: (ErrorKind.INVALID_ARGUMENT, "has no frames"),
        no_frames: (ErrorKind.INVALID_ARGUMENT, "no-frames.avi: has no frames"),
        sound: (ErrorKind.INVALID_ARGUMENT, "has no video stream"),
    }
    for path, (kind, words) in cases.items():
        with pytest.raises(ClassifierError) as caught:
            list(video_source(path).frames)
        assert caught.value.kind == kind and words in caught.value.message, (path, caught.value.message)
        assert str(path) in caught.value.message and "\n" not in caught.value.message


def test_a_folder_gives_its_images_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    names = ["b.jpg", "a.png", "c.JPEG"]
    shared = [IMAGES / "classify" / n for n in ("bird.jpg", "sparrow.png", "burger.jpg")]
    for name, image in zip(names, shared, strict=True):
        (folder / name).write_bytes(image.read_bytes())
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".hidden.jpg").write_bytes(b"skipped")
    frames = list(folder_source(folder).frames)
    assert frames == [(folder / n).read_bytes() for n in sorted(names)]  # by name, bytes as they are

    empty = tmp_path / "empty"
    empty.mkdir()
    for path, words in (
        (empty, "no images"),
        (tmp_path / "nowhere", "no such file"),
        (shared[0], "not a dir"),
    ):
        with pytest.raises(ClassifierError, match=words):
            folder_source(path)


# --- the publisher -------------------------------------------------------------------------------------


def test_a_frame_event_follows_the_stream_contract() -> None:
    options = StreamOptions(stream_id="cam-1", fps=10, model="birds", top_k=2)
    event = json.loads(frame_event(b"\xff\xd8jpeg", 7, options, 1700000000.25))
    assert event == {
        "image_base64": base64.b64encode(b"\xff\xd8jpeg").decode(),
        "stream_id": "cam-1",
        "seq": 7,
        "captured_at": 1700000000.25,
        "model": "birds",
        "top_k": 2,
    }
    plain = json.loads(frame_event(b"x", 0, StreamOptions(stream_id="s", fps=1), 1.0))
    assert set(plain) == {"image_base64", "stream_id", "seq", "captured_at"}


def test_frames_are_published_on_schedule_in_seq_order() -> None:
    handed: list[tuple[int, float, float]] = []  # (seq, monotonic time, captured_at)
    lock = threading.Lock()

    def publish(seq: int, event: bytes) -> None:
        with lock:
            handed.append((seq, time.monotonic(), json.loads(event)["captured_at"]))

    summary = PublishSummary()
    started = time.monotonic()
    publish_stream((b"frame" for _ in range(30)), publish, StreamOptions("s", fps=100), summary)
    assert summary.published == 30 and summary.failed == 0
    assert sorted(seq for seq, _, _ in handed) == list(range(30))
    # never early: frame n is handed over no sooner than n/fps after the start (lateness is not asserted)
    for seq, at, _ in handed:
        assert at - started >= seq / 100 - 0.001, (seq, at - started)
    assert summary.elapsed_s >= 29 / 100
    by_seq = sorted(handed)
    assert all(a[2] <= b[2] for a, b in itertools.pairwise(by_seq))  # captured_at grows with seq


def test_max_frames_stops_the_source() -> None:
    pulled = 0

    def frames():  # counts what the publisher takes
        nonlocal pulled
        for _ in range(100):
            pulled += 1
            yield b"f"

    summary = PublishSummary()
    publish_stream(frames(), lambda seq, event: None, StreamOptions("s", fps=0, max_frames=5), summary)
    assert (summary.published, pulled) == (5, 5)


def test_no_more_than_max_inflight_publishes_at_once() -> None:
    """The first three publishes block until released: no fourth may start meanwhile."""
    gate = threading.Event()
    lock = threading.Lock()
    running, most, started = 0, 0, 0

    def publish(seq: int, event: bytes) -> None:
        nonlocal running, most, started
        with lock:
            running += 1
            started += 1
            most = max(most, running)
        gate.wait(30)
        with lock:
            running -= 1

    summary = PublishSummary()
    worker = threading.Thread(
        target=publish_stream,
        args=((b"f" for _ in range(20)), publish, StreamOptions("s", fps=0, max_inflight=3), summary),
    )
    worker.start()
    deadline = time.monotonic() + 30
    while started < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # give a (wrong) fourth publish the chance to start: what is asserted is that it did not
    with lock:
        assert started == 3
    gate.set()
    worker.join(30)
    assert summary.published == 20 and most == 3 and summary.max_inflight_seen == 3


def test_failed_publishes_are_counted_and_the_stream_goes_on() -> None:
    def publish(seq: int, event: bytes) -> None:
        if seq in (2, 5):
            raise RuntimeError(f"broker said no to {seq}")

    summary = PublishSummary()
    publish_stream((b"f" for _ in range(8)), publish, StreamOptions("s", fps=0), summary)
    assert (summary.published, summary.failed) == (6, 2)
    assert sorted(summary.errors) == ["frame 2: broker said no to 2", "frame 5: broker said no to 5"]


# --- the reorder buffer --------------------------------------------------------------------------------


def _seqs(items: list[Emitted]) -> list[int | tuple[int, int]]:
    return [item.skipped if item.skipped else item.seq for item in items]


def test_results_come_out_in_seq_order_without_duplicates() -> None:
    buffer = ReorderBuffer(window=8, wait_s=1.0)
    out: list[Emitted] = []
    for seq in (0, 2, 1, 1, 3, 0, 5, 4):
        out += buffer.add("cam", seq, {"seq": seq}, now=0.0)
    assert _seqs(out) == [0, 1, 2, 3, 4, 5]
    assert buffer.counts.duplicates == 2 and buffer.counts.skipped == 0


def test_a_gap_is_waited_for_then_skipped_and_said() -> None:
    buffer = ReorderBuffer(window=8, wait_s=1.0)
    assert _seqs(buffer.add("cam", 0, {}, now=0.0)) == [0]
    assert buffer.add("cam", 3, {}, now=0.1) == []  # 1 and 2 may still come
    assert buffer.add("cam", 4, {}, now=0.2) == []
    assert buffer.next_deadline() == pytest.approx(1.1)
    assert buffer.poll(now=1.0) == []
    released = buffer.poll(now=1.1)
    assert _seqs(released) == [(1, 2), 3, 4]
    assert describe(released[0]) == "cam #1-2: skipped, not received in time"
    assert buffer.add("cam", 2, {}, now=1.2) == []  # too late: dropped, as a duplicate
    assert (buffer.counts.skipped, buffer.counts.duplicates) == (2, 1)


def test_a_full_window_skips_the_gap_at_once() -> None:
    buffer = ReorderBuffer(window=2, wait_s=60.0)
    buffer.add("cam", 0, {}, now=0.0)
    assert buffer.add("cam", 2, {}, now=0.0) == []
    assert buffer.add("cam", 3, {}, now=0.0) == []
    assert _seqs(buffer.add("cam", 4, {}, now=0.0)) == [(1, 1), 2, 3, 4]  # three held behind the gap > 2


def test_a_stream_joined_late_starts_at_its_lowest_seq_silently() -> None:
    buffer = ReorderBuffer(window=8, wait_s=1.0)
    assert buffer.add("cam", 41, {}, now=0.0) == []
    assert buffer.add("cam", 40, {}, now=0.5) == []
    assert _seqs(buffer.poll(now=1.0)) == [40, 41]  # no "skipped 0-39"
    assert buffer.counts.skipped == 0


def test_the_least_recently_heard_stream_is_forgotten_with_what_it_held() -> None:
    buffer = ReorderBuffer(window=8, wait_s=60.0, max_streams=2)
    buffer.add("a", 1, {}, 0.0)  # held: waiting for a's seq 0
    buffer.add("b", 0, {}, 0.0)
    buffer.add("b", 1, {}, 0.0)  # b heard after a: a is the least recent
    out = buffer.add("c", 0, {}, 0.0)
    assert [(i.stream_id, i.seq) for i in out] == [("a", 1), ("c", 0)]  # a flushed, not lost
    assert _seqs(buffer.add("b", 2, {}, 0.0)) == [2]  # b is still remembered
    assert buffer.add("b", 1, {}, 0.0) == [] and buffer.counts.duplicates == 1


def test_streams_are_ordered_each_on_its_own() -> None:
    buffer = ReorderBuffer(window=8, wait_s=1.0)
    out = buffer.add("a", 1, {}, 0.0) + buffer.add("b", 0, {}, 0.0) + buffer.add("a", 0, {}, 0.0)
    assert [(i.stream_id, i.seq) for i in out] == [("b", 0), ("a", 0), ("a", 1)]
    assert buffer.add("b", 0, {}, 0.0) == [] and buffer.add("a", 2, {}, 0.0)[0].seq == 2


def test_flush_emits_what_is_held_in_order() -> None:
    buffer = ReorderBuffer(window=8, wait_s=60.0)
    for seq in (0, 4, 2):
        buffer.add("cam", seq, {}, now=0.0)
    assert _seqs(buffer.flush()) == [(1, 1), 2, (3, 3), 4]


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(st.tuples(st.integers(0, 30), st.floats(0, 0.5)), max_size=60),
    window=st.integers(1, 10),
    wait_s=st.floats(0, 2),
)
def test_any_arrival_order_emits_each_seq_at_most_once_increasing(
    arrivals: list[tuple[int, float]], window: int, wait_s: float
) -> None:
    buffer = ReorderBuffer(window=window, wait_s=wait_s)
    now, out = 0.0, []
    for seq, pause in arrivals:
        now += pause
        out += buffer.poll(now) + buffer.add("cam", seq, {"seq": seq}, now)
    out += buffer.flush()
    results = [item.seq for item in out if item.result is not None]
    assert results == sorted(set(results))  # increasing: in order, no duplicate
    assert all(item.result is None or item.result["seq"] == item.seq for item in out)
    assert set(results) <= {seq for seq, _ in arrivals}
    skipped = [s for item in out if item.skipped for s in range(item.skipped[0], item.skipped[1] + 1)]
    assert not set(skipped) & set(results)
    # every distinct seq that arrived was emitted, or dropped as late (after its gap was skipped)
    assert buffer.counts.emitted + buffer.counts.duplicates == len(arrivals)
    if wait_s >= 1.0 and window >= 31:  # nothing can be skipped: every distinct seq comes out
        assert results == sorted({seq for seq, _ in arrivals})


def test_stream_fields_of_results() -> None:
    assert stream_fields({"stream_id": "cam", "seq": 3}) == ("cam", 3)
    for result in (
        {},
        {"stream_id": "cam"},
        {"seq": 1},
        {"stream_id": "cam", "seq": True},
        {"stream_id": 1, "seq": 1},
    ):
        assert stream_fields(result) is None, result


def test_a_result_line_says_the_class_the_score_and_the_latency() -> None:
    result = {
        "predictions": [{"index": 166, "label": "Aix galericulata", "score": 0.7265}],
        "capture_latency_ms": 41.6,
    }
    assert describe(Emitted("cam", 3, result=result)) == "cam #3: Aix galericulata 0.727, 42 ms after capture"
    error = {"error": {"code": "invalid_argument", "message": "not an image"}}
    assert describe(Emitted("cam", 4, result=error)) == "cam #4: error invalid_argument: not an image"
    # a guest of its own answers what it likes: a class with no score, or no predictions at all
    assert describe(Emitted("cam", 5, result={"predictions": [{"index": 7}]})) == "cam #5: 7"
    assert describe(Emitted("cam", 6, result={"output": "a bird"})) == "cam #6: (no predictions)"


# --- the command line, before any sidecar -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["publish"], 1, "nothing to publish"),
        (["publish", "x.jpg", "--fps", "5"], 1, "--fps is for a stream"),
        (["publish", "x.jpg", "--video", "v.mp4"], 1, "not both"),
        (["publish", "--video", "missing.mp4"], 1, "--video missing.mp4: no such file"),
        (["publish", "--frames", "missing"], 1, "--frames missing: no such file"),
        (["publish", "--video", "v.mp4", "--stream-id", "no spaces"], 1, "--stream-id 'no spaces'"),
        (["publish", "--video", "v.mp4", "--frames", "d"], 2, "not allowed with argument"),
        (["publish", "--video", "v.mp4", "--fps", "-1"], 2, "not a number >= 0"),
        (["results", "--window", "0"], 2, "not a whole number >= 1"),
        (["results", "--stream-id", "a/b"], 1, "--stream-id 'a/b'"),
    ],
)
def test_bad_stream_commands_are_one_line(
    capfd, monkeypatch, tmp_path: Path, argv: list[str], code: int, words: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAPR_GRPC_PORT", raising=False)
    with pytest.raises(SystemExit) if code == 2 else _no_exit() as exited:
        returned = main(argv)
    _, err = capfd.readouterr()
    assert (exited.value.code if code == 2 else returned) == code
    assert words in err and "Traceback" not in err, err
    if code == 1:
        assert len(err.splitlines()) == 1, err


class _no_exit:  # a context manager like pytest.raises(SystemExit), for the calls that return
    value = None

    def __enter__(self) -> _no_exit:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_file_that_is_not_a_video_fails_before_the_sidecar_is_needed(
    capfd, monkeypatch, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.mkv"
    notes.write_text("hello\n")
    monkeypatch.setenv("DAPR_GRPC_PORT", "1")  # nothing listens: the error must come first
    monkeypatch.setenv("DAPR_HTTP_PORT", "1")
    assert main(["publish", "--video", str(notes)]) == 1
    _, err = capfd.readouterr()
    reason = "Invalid data found when processing input"
    assert err == f"classifier: --video {notes}: not a video PyAV can decode ({reason})\n"


# --- publish through the daprd double (tests/daprd.py): what the summary says when frames fail --------


def clean_env(daprd: FakeDaprd, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_"))}
    return {**env, **{k: v for k, v in daprd.env().items() if k.startswith("DAPR_")}, **extra}


def png_avi(path: Path, frames: int) -> Path:
    """A video of PNG frames: each frame a PNG file of its own, so that one can be damaged alone."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        for _ in range(frames):
            pixels = rng.integers(0, 255, (48, 64, 3), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_a_damaged_frame_stops_the_stream_after_the_frames_before_it(tmp_path: Path) -> None:
    video = png_avi(tmp_path / "damaged.avi", 6)
    data = video.read_bytes()
    fourth = [i for i in range(len(data)) if data.startswith(b"\x89PNG", i)][3]
    video.write_bytes(data[:fourth] + bytes(16) + data[fourth + 16 :])  # frame 3's PNG signature gone
    with FakeDaprd(pubsubs={"pubsub"}) as daprd:
        done = subprocess.run(
            [CLASSIFIER, "publish", "--video", video, "--fps", "0", "--stream-id", "dmg"],
            env=clean_env(daprd), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        published = daprd.wait_for_published("images", 3)
    assert done.returncode == 1
    assert done.stdout.startswith("stopped after publishing 3 frames of stream dmg to pubsub/images in "), (
        done.stdout
    )
    assert done.stderr.splitlines() == [
        f"publishing {video} as stream dmg as fast as it goes",
        f"classifier: --video {video}: frame 3: cannot decode (Invalid data found when processing input)",
    ]
    assert sorted(p.event_id for p in published) == ["dmg:0", "dmg:1", "dmg:2"]


def test_failed_publishes_are_said_once_each_and_on_a_terminal_as_they_go(tmp_path: Path) -> None:
    """No such pub/sub: every frame fails; the first five failures are said in one line each, the progress
    line (on a terminal: drawn in place) counts them, and the exit code is 1."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(7):
        (folder / f"{index:02d}.jpg").write_bytes((IMAGES / "classify" / "bird.jpg").read_bytes())
    terminal, command_side = pty.openpty()
    seen: list[bytes] = []
    reader = threading.Thread(target=read_terminal, args=(terminal, seen), daemon=True)
    reader.start()
    try:
        with FakeDaprd(pubsubs={"pubsub"}) as daprd:
            done = subprocess.run(
                [CLASSIFIER, "publish", "--frames", folder, "--fps", "0", "--max-inflight", "1",
                 "--stream-id", "s"],
                env=clean_env(daprd, CLASSIFIER_PUBSUB="nosuch"), stdout=subprocess.PIPE, stderr=command_side,
                text=True, timeout=120,
            )  # fmt: skip
        os.close(command_side)
        reader.join(30)
    finally:
        os.close(terminal)
    assert done.returncode == 1
    assert re.fullmatch(
        r"published 0 frames of stream s to nosuch/images in \d+\.\d s \(0\.0 frames/s, 7 failed\)\n",
        done.stdout,
    ), done.stdout
    lines = b"".join(seen).decode().replace("\r\n", "\n").split("\n")
    assert lines[0] == f"publishing {folder} as stream s as fast as it goes"
    # one slot: frame N is handed over once frame N-1 has failed, so its progress counts N failed (N + 1
    # if its own publish failed already), each drawn over the one before
    drawn = lines[1].split("\r")
    assert drawn[0] == "" and len(drawn) == 8, repr(lines[1])
    for n, line in enumerate(drawn[1:]):
        shown = re.fullmatch(r"published 0 frames, ([01]) in flight(?:, (\d) failed)?", line)
        assert shown is not None, repr(line)
        assert int(shown[2] or 0) + int(shown[1]) == n + 1, repr(line)
    assert lines[2:] == [
        f"classifier: not published: frame {n}: dapr_pubsub_not_found: pubsub nosuch is not found"
        for n in range(5)
    ] + [""]
