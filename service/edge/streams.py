"""Streams of frames (docs/streams.md): what a result carries back of a frame's place in its
stream, the frames of each stream the app never saw, and the entries of a bulk batch spread
over the workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from .requests import StreamFields

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Answer = TypeVar("Answer")

# A frame arriving this many seqs behind the newest of its stream is no longer waited for: the
# ones still missing below it count as skipped. Deliveries run in parallel (daprd's Redis
# `concurrency`, a batch on several workers), so frames arrive somewhat out of order.
REORDER_WINDOW = 256
MAX_STREAMS = 1024  # streams tracked at once; the least recently seen is forgotten


def result_fields(stream: StreamFields, now: float | None = None) -> dict[str, Any]:
    """A result's stream fields: those given, plus `capture_latency_ms` from `captured_at`."""
    fields = stream.to_dict()
    if stream.captured_at is not None:
        now = time.time() if now is None else now
        fields["capture_latency_ms"] = round((now - stream.captured_at) * 1000, 3)
    return fields


class _Stream:
    __slots__ = ("highest", "missing")

    def __init__(self, seq: int) -> None:
        self.highest = seq
        self.missing: set[int] = set()  # seqs below `highest`, within the window, not seen yet


class StreamTracker:
    """Per stream, the seqs the app has seen: counts frames skipped (never arrived: trimmed by
    the broker's length bound, or lost before it) and frames repeated (delivered again: at least
    once). Thread-safe; memory bounded by MAX_STREAMS x REORDER_WINDOW."""

    def __init__(
        self,
        skipped: Callable[[int], None],
        repeated: Callable[[], None],
        window: int = REORDER_WINDOW,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self._skipped = skipped
        self._repeated = repeated
        self.window = window
        self.max_streams = max_streams
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, stream_id: str, seq: int) -> None:
        skipped = 0
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None:
                self._streams[stream_id] = _Stream(seq)
                if len(self._streams) > self.max_streams:
                    self._streams.popitem(last=False)
                return
            self._streams.move_to_end(stream_id)
            if seq > stream.highest:
                gap_start = max(stream.highest + 1, seq - self.window)
                skipped += gap_start - (stream.highest + 1)  # too far behind to wait for
                stream.missing.update(range(gap_start, seq))
                stream.highest = seq
                floor = seq - self.window
                expired = [missing for missing in stream.missing if missing < floor]
                stream.missing.difference_update(expired)
                skipped += len(expired)
            elif seq in stream.missing:
                stream.missing.discard(seq)  # late, not lost
            else:
                self._repeated()
                return
            highest = stream.highest
        if skipped:
            self._skipped(skipped)
            log.warning(
                "stream %s: %d frame(s) never arrived before seq %d (trimmed by the pub/sub "
                "stream's length bound, or lost before it)",
                stream_id,
                skipped,
                highest,
            )

    def missing(self, stream_id: str) -> int:
        """Frames of the stream not seen yet within the window (late ones may still come)."""
        with self._lock:
            stream = self._streams.get(stream_id)
            return len(stream.missing) if stream is not None else 0


def run_spread(
    pool: Executor, items: Sequence[Item], handle: Callable[[Item], Answer], helpers: int
) -> list[Answer]:
    """`handle` of every item (which should not raise), on the calling thread and up to
    `helpers` pool threads at once, in the order of `items`. The caller works too, so the batch
    finishes even when every pool thread is busy (the caller is a pool thread itself: waiting
    only on the pool could deadlock)."""
    answers: list[Answer | None] = [None] * len(items)
    next_index = iter(range(len(items)))
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def drain() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            try:
                answers[index] = handle(items[index])
            finally:
                done.release()

    for _ in range(min(helpers, len(items) - 1)):
        try:
            pool.submit(drain)
        except RuntimeError:  # the pool is shut down (the service is stopping): the caller does it all
            break
    drain()
    for _ in items:
        done.acquire()
    finished = [answer for answer in answers if answer is not None]
    if len(finished) != len(items):  # `handle` raised on a pool thread
        raise RuntimeError(f"{len(items) - len(finished)} of {len(items)} batch entries got no answer")
    return finished
