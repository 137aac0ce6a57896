"""The page's stream view: results of a stream, live, as Server-Sent Events.

With a sidecar, the page server holds one streaming subscription to the results topic (the one
`classifier results --follow` uses: service/streams/commands.py `subscribe_results`), puts every result
through one `ReorderBuffer` (seq order, duplicates dropped, gaps skipped after a wait) and fans what it
emits out to the browsers following that stream id. Each browser has a bounded queue: one that reads
too slowly loses its oldest events, and is told how many, so memory never grows with a slow reader.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any

from ..config import ServeSettings
from ..streams.commands import CLOSED, STREAM_ID, subscribe_results
from ..streams.follow import Emitted, ReorderBuffer, Result, stream_fields

Event = dict[str, Any]  # one SSE event's JSON: {"type": "result" | "skipped" | "duplicate", ...}
CLIENT_QUEUE = 256  # events held for one browser before its oldest are dropped
# A gap is waited for this long (or REORDER_WINDOW results) before it is skipped: longer than the 2 s of
# `classifier results`, since a person watching can wait, and a frame classified slowly (a busy replica)
# would otherwise be skipped, then dropped as too late when it comes.
REORDER_WAIT_S = 5.0
REORDER_WINDOW = 32
IDLE_WAKE_S = 0.5  # how often the fan-out looks whether it was closed, with nothing to do


def valid_stream_id(text: str) -> bool:
    return STREAM_ID.fullmatch(text) is not None


class Watcher:
    """One browser following one stream: its events, at most `limit`, and how many were dropped."""

    def __init__(self, stream_id: str, limit: int = CLIENT_QUEUE) -> None:
        self.stream_id = stream_id
        self._events: deque[Event] = deque(maxlen=limit)
        self._dropped = 0  # not yet told to the browser
        self._closed = False
        self._ready = threading.Condition()

    def put(self, event: Event) -> None:
        with self._ready:
            if len(self._events) == self._events.maxlen:
                self._dropped += 1  # the deque drops its oldest
            self._events.append(event)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def take(self, timeout: float) -> tuple[list[Event], int] | None:
        """What arrived (waiting up to `timeout` for something) and how many were dropped since the
        last take; None once closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._events or self._dropped or self._closed, timeout)
            if self._closed:
                return None
            events, dropped = list(self._events), self._dropped
            self._events.clear()
            self._dropped = 0
            return events, dropped


class StreamFanOut:
    """The results of every stream in seq order (one ReorderBuffer), to the watchers of each stream id."""

    def __init__(self, window: int = REORDER_WINDOW, wait_s: float = REORDER_WAIT_S) -> None:
        self._buffer = ReorderBuffer(window, wait_s)
        self._watchers: dict[str, list[Watcher]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def watch(self, stream_id: str, limit: int = CLIENT_QUEUE) -> Watcher:
        watcher = Watcher(stream_id, limit)
        with self._lock:
            if self._closed.is_set():
                watcher.close()
            self._watchers.setdefault(stream_id, []).append(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        with self._lock:
            watchers = self._watchers.get(watcher.stream_id, [])
            if watcher in watchers:
                watchers.remove(watcher)
            if not watchers:
                self._watchers.pop(watcher.stream_id, None)

    def watching(self, stream_id: str) -> int:
        with self._lock:
            return len(self._watchers.get(stream_id, []))

    def run(self, messages: queue.Queue[object]) -> None:
        """Until closed, or the subscription ends: each result from `messages` through the buffer."""
        while not self._closed.is_set():
            deadline = self._buffer.next_deadline()
            wait = IDLE_WAKE_S if deadline is None else min(IDLE_WAKE_S, deadline - time.monotonic())
            try:
                item = messages.get(timeout=max(0.0, wait))
            except queue.Empty:
                item = None
            if item is CLOSED or isinstance(item, Exception):
                break
            if isinstance(item, dict):
                self._deliver(item, time.monotonic())
            self._send(self._buffer.poll(time.monotonic()))
        self.close()

    def _deliver(self, result: Result, now: float) -> None:
        fields = stream_fields(result)
        if fields is None:
            return  # a single image's result: no stream to show it in
        stream_id, seq = fields
        duplicates = self._buffer.counts.duplicates
        emitted = self._buffer.add(stream_id, seq, result, now)
        if self._buffer.counts.duplicates > duplicates:
            self._publish(stream_id, {"type": "duplicate", "seq": seq})
        self._send(emitted)

    def _send(self, items: list[Emitted]) -> None:
        for item in items:
            if item.skipped is not None:
                first, last = item.skipped
                self._publish(item.stream_id, {"type": "skipped", "first": first, "last": last})
            else:
                self._publish(item.stream_id, {"type": "result", "seq": item.seq, "result": item.result})

    def _publish(self, stream_id: str, event: Event) -> None:
        with self._lock:
            watchers = list(self._watchers.get(stream_id, ()))
        for watcher in watchers:
            watcher.put(event)

    def close(self) -> None:
        """Ends every watcher's events (their responses end) and the run loop."""
        self._closed.set()
        with self._lock:
            watchers = [w for ws in self._watchers.values() for w in ws]
        for watcher in watchers:
            watcher.close()


class StreamHub:
    """The page server's one subscription to the results topic, through the sidecar, and its fan-out."""

    def __init__(self, serve: ServeSettings) -> None:
        from dapr.clients import DaprClient

        self.fanout = StreamFanOut()
        self._client = DaprClient()
        try:
            self._subscription, messages = subscribe_results(self._client, serve)
        except BaseException:
            self._client.close()
            raise
        self._thread = threading.Thread(
            target=self.fanout.run, args=(messages,), name="ui-streams", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.fanout.close()
        self._subscription.close()
        self._thread.join(timeout=5)
        self._client.close()
