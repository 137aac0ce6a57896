"""Results of a stream in `seq` order: a reorder buffer over the results topic, with de-duplication.

Results arrive out of order (the service classifies several frames at once, daprd delivers in batches and
redelivers on retry) and sometimes twice (a redelivery after a result was published). Per stream, the buffer
emits results in `seq` order: a result whose seq is the next one goes out at once; a gap is waited for at most
`wait_s` (from the arrival of the oldest result held behind it) or until `window` results are held behind it,
then it is skipped, and said so. A seq that was emitted or skipped already is a duplicate (or came too late)
and is dropped: so memory stays bounded by `window` per stream, and (stream_id, seq) is emitted at most once.

Where a stream starts is not known (a viewer may join a running stream): seq 0 goes out at once, a first
result with a higher seq waits as a gap would, and the stream then starts at the lowest seq held, silently.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

Result = dict[str, Any]


@dataclass(frozen=True)
class Emitted:
    """One thing to print: a result (`result` set), or a gap skipped (`skipped` = (first, last) seq)."""

    stream_id: str
    seq: int
    result: Result | None = None
    skipped: tuple[int, int] | None = None


@dataclass
class _Stream:
    next_seq: int | None = None  # None: nothing emitted yet
    held: dict[int, tuple[float, Result]] = field(default_factory=dict)  # seq -> (arrival, result)


@dataclass
class FollowCounts:
    emitted: int = 0
    duplicates: int = 0  # a seq that was emitted, skipped or held already
    skipped: int = 0  # seqs that never came within the window


# Streams remembered at once: a viewer of every stream (the page, `results` without --stream-id)
# runs for days while streams come and go; the least recently heard one is forgotten (flushed).
MAX_STREAMS = 1024


class ReorderBuffer:
    def __init__(self, window: int = 32, wait_s: float = 2.0, max_streams: int = MAX_STREAMS) -> None:
        if window < 1 or wait_s < 0 or max_streams < 1:
            raise ValueError("window and max_streams must be >= 1 and wait_s >= 0")
        self.window = window
        self.wait_s = wait_s
        self.max_streams = max_streams
        self.counts = FollowCounts()
        self._streams: OrderedDict[str, _Stream] = OrderedDict()

    def add(self, stream_id: str, seq: int, result: Result, now: float) -> list[Emitted]:
        """Take one result; returns what can be emitted now (in order)."""
        out: list[Emitted] = []
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream()
            if len(self._streams) > self.max_streams:
                forgotten_id, forgotten = self._streams.popitem(last=False)
                out += self._release(forgotten_id, forgotten, float("inf"), flush=True)
        self._streams.move_to_end(stream_id)
        if (stream.next_seq is not None and seq < stream.next_seq) or seq in stream.held:
            self.counts.duplicates += 1
            return out
        stream.held[seq] = (now, result)
        return out + self._release(stream_id, stream, now, flush=False)

    def poll(self, now: float) -> list[Emitted]:
        """What the passing of time releases: gaps waited for `wait_s`."""
        out: list[Emitted] = []
        for stream_id, stream in self._streams.items():
            out += self._release(stream_id, stream, now, flush=False)
        return out

    def flush(self) -> list[Emitted]:
        """Everything held, in order, skipping the gaps (at the end of a run)."""
        out: list[Emitted] = []
        for stream_id, stream in self._streams.items():
            out += self._release(stream_id, stream, float("inf"), flush=True)
        return out

    def next_deadline(self) -> float | None:
        """When poll() may next release something (None: nothing is held)."""
        arrivals = [arrival for s in self._streams.values() for arrival, _ in s.held.values()]
        return min(arrivals) + self.wait_s if arrivals else None

    def _release(self, stream_id: str, stream: _Stream, now: float, *, flush: bool) -> list[Emitted]:
        out: list[Emitted] = []
        while stream.held:
            lowest = min(stream.held)
            expected = 0 if stream.next_seq is None else stream.next_seq
            if lowest != expected:
                oldest = min(arrival for arrival, _ in stream.held.values())
                waited_out = flush or len(stream.held) > self.window or now - oldest >= self.wait_s
                if not waited_out:
                    break
                if stream.next_seq is not None:  # a gap in a stream that had started: say so
                    out.append(Emitted(stream_id, expected, skipped=(expected, lowest - 1)))
                    self.counts.skipped += lowest - expected
            _, result = stream.held.pop(lowest)
            out.append(Emitted(stream_id, lowest, result=result))
            self.counts.emitted += 1
            stream.next_seq = lowest + 1
        return out


def stream_fields(result: Result) -> tuple[str, int] | None:
    """(stream_id, seq) of a result of a stream, else None (a result of a single image, or malformed)."""
    stream_id, seq = result.get("stream_id"), result.get("seq")
    if isinstance(stream_id, str) and isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
        return stream_id, seq
    return None


def describe(item: Emitted) -> str:
    """One line for a result of a stream (or a gap), as `classifier results` prints it."""
    if item.skipped is not None:
        first, last = item.skipped
        seqs = f"#{first}" if first == last else f"#{first}-{last}"
        return f"{item.stream_id} {seqs}: skipped, not received in time"
    return f"{item.stream_id} #{item.seq}: {result_text(item.result or {})}"


def result_text(result: Result) -> str:
    """What a result says: its best class and score, or its error; and its latency from capture."""
    latency = result.get("capture_latency_ms")
    after = f", {latency:.0f} ms after capture" if isinstance(latency, int | float) else ""
    error = result.get("error")
    if isinstance(error, dict):
        return f"error {error.get('code')}: {error.get('message')}{after}"
    return f"{_top(result)}{after}"


def _top(result: Result) -> str:
    """The best class of a result: its label and score."""
    entries = result.get("predictions")
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        best = entries[0]
        label = best.get("label", best.get("index", "?"))
        score = best.get("score")
        return f"{label} {score:.3f}" if isinstance(score, int | float) else str(label)
    return "(no predictions)"
