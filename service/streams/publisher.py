"""Publishing a stream of frames at a steady rate, with a bounded number of publishes in flight.

Frame `seq` is due at `start + seq / fps` (an absolute schedule: a late frame does not push the later ones
back, the publisher catches up). At most `max_inflight` publishes run at once, each in a thread of a pool
of that size; when they are all busy the next frame waits for one to finish (the sidecar's pace bounds
the publisher's, memory stays bounded). `captured_at` is stamped when a frame is handed to a publish, so
`capture_latency_ms` in a result covers the publish, the queue in the broker and the classification.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StreamOptions:
    stream_id: str
    fps: float  # frames per second; 0: as fast as the in-flight bound allows
    max_inflight: int = 8
    max_frames: int | None = None
    model: str | None = None
    top_k: int | None = None


@dataclass
class PublishSummary:
    published: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    max_inflight_seen: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failures' messages

    @property
    def rate(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0


MAX_ERRORS_KEPT = 5


def frame_event(image: bytes, seq: int, options: StreamOptions, captured_at: float) -> bytes:
    """The JSON image event of one frame (the stream contract: docs/streams.md)."""
    body: dict[str, object] = {
        "image_base64": base64.b64encode(image).decode(),
        "stream_id": options.stream_id,
        "seq": seq,
        "captured_at": captured_at,
    }
    if options.model:
        body["model"] = options.model
    if options.top_k:
        body["top_k"] = options.top_k
    return json.dumps(body).encode()


def publish_stream(
    frames: Iterable[bytes],
    publish: Callable[[int, bytes], None],
    options: StreamOptions,
    summary: PublishSummary,
    progress: Callable[[PublishSummary, int], None] = lambda summary, inflight: None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Publish each frame's event with `publish(seq, event)` on the schedule of `options`, counting in
    `summary` (the caller's, so that it is there also after Ctrl-C or a frame that cannot be decoded: the
    publishes in flight finish first). `progress(summary, inflight)` is called after each frame is handed
    over."""
    slots = threading.BoundedSemaphore(options.max_inflight)
    lock = threading.Lock()
    inflight = 0
    started = clock()

    def done(seq: int, future: Future[None]) -> None:
        nonlocal inflight
        error = future.exception()
        with lock:
            inflight -= 1
            if error is None:
                summary.published += 1
            else:
                summary.failed += 1
                if len(summary.errors) < MAX_ERRORS_KEPT:
                    summary.errors.append(f"frame {seq}: {error}")
        slots.release()

    pool = ThreadPoolExecutor(options.max_inflight, thread_name_prefix="publish")
    try:
        for seq, image in enumerate(itertools.islice(frames, options.max_frames)):
            if options.fps > 0:
                delay = started + seq / options.fps - clock()
                if delay > 0:
                    time.sleep(delay)
            slots.acquire()
            event = frame_event(image, seq, options, time.time())
            with lock:
                inflight += 1
                summary.max_inflight_seen = max(summary.max_inflight_seen, inflight)
            future = pool.submit(publish, seq, event)
            future.add_done_callback(functools.partial(done, seq))
            progress(summary, inflight)
    finally:
        pool.shutdown(wait=True)
        summary.elapsed_s = clock() - started
