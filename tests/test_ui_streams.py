"""The page server's stream events (GET /api/streams/<id>/events), in process, without a browser or daprd.

A real UiServer on a loopback port with a real StreamFanOut (ReorderBuffer, per-browser queues), fed
results through the queue its subscription reader fills (service/streams/commands.py subscribe_results),
and read by real HTTP clients as a browser's EventSource reads them. The subscription through a real
daprd, and the page showing it, are tests/test_real_dapr_ui.py.
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from service.streams.commands import CLOSED
from service.ui.server import PageConfig, UiServer
from service.ui.streams import StreamFanOut, Watcher

TIMEOUT_S = 30.0


@dataclass
class Served:
    server: UiServer
    fanout: StreamFanOut
    results: queue.Queue[object]  # as the subscription's reader thread fills it
    port: int


@pytest.fixture
def served() -> Iterator[Served]:
    server = UiServer(0, PageConfig("/api", "a test", streams=True), 1 << 20)
    fanout = StreamFanOut(window=8, wait_s=0.5)
    server.streams = fanout
    results: queue.Queue[object] = queue.Queue()
    fanning = threading.Thread(target=fanout.run, args=(results,), daemon=True)
    fanning.start()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield Served(server, fanout, results, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        results.put(CLOSED)
        fanning.join(TIMEOUT_S)
        serving.join(TIMEOUT_S)


class Events:
    """One GET /api/streams/<id>/events, its `data:` events read as they come."""

    def __init__(self, port: int, stream_id: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        self.connection.request("GET", f"/api/streams/{stream_id}/events")
        self.response = self.connection.getresponse()

    def next(self) -> dict[str, Any] | None:
        """The next event (comments skipped); None at the end of the response."""
        while True:
            line = self.response.readline()
            if not line:
                return None
            if line.startswith(b"data: "):
                return json.loads(line[len(b"data: ") :])

    def close(self) -> None:
        self.response.close()  # the response holds the socket open too
        self.connection.close()


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {TIMEOUT_S} s: {what}"
        time.sleep(0.01)


def result(stream_id: str | None, seq: int | None, label: str) -> dict[str, Any]:
    fields = {} if stream_id is None else {"stream_id": stream_id, "seq": seq}
    return {**fields, "predictions": [{"label": label, "score": 0.5}], "model": "m", "version": "1"}


def test_each_stream_goes_to_its_followers_in_seq_order_once(served: Served) -> None:
    first, second, other = (Events(served.port, s) for s in ("cam-a", "cam-a", "cam-b"))
    try:
        assert first.response.status == 200
        assert first.response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        wait_until(lambda: served.fanout.watching("cam-a") == 2, "two followers of cam-a")
        wait_until(lambda: served.fanout.watching("cam-b") == 1, "one follower of cam-b")
        for item in (
            result("cam-a", 1, "one"),  # before 0: held until 0 comes
            result(None, None, "single"),  # a single image's result: in no stream
            result("cam-a", 0, "zero"),
            result("cam-b", 0, "b-zero"),
            result("cam-a", 0, "zero again"),  # a redelivery
            result("cam-a", 2, "two"),
        ):
            served.results.put(item)
        expected = [
            {"type": "result", "seq": 0, "result": result("cam-a", 0, "zero")},
            {"type": "result", "seq": 1, "result": result("cam-a", 1, "one")},
            {"type": "duplicate", "seq": 0},
            {"type": "result", "seq": 2, "result": result("cam-a", 2, "two")},
        ]
        assert [first.next() for _ in expected] == expected
        assert [second.next() for _ in expected] == expected
        assert other.next() == {"type": "result", "seq": 0, "result": result("cam-b", 0, "b-zero")}
        # A gap is waited for (wait_s), then skipped and said so; what came behind it follows.
        served.results.put(result("cam-a", 5, "five"))
        assert first.next() == {"type": "skipped", "first": 3, "last": 4}
        assert first.next() == {"type": "result", "seq": 5, "result": result("cam-a", 5, "five")}
        # A follower that goes is forgotten; the server stopping ends the others' responses.
        second.close()
        wait_until(lambda: served.fanout.watching("cam-a") == 1, "the closed follower forgotten")
        served.server.shutdown()
        served.server.server_close()
        assert first.next() is None and other.next() is None
    finally:
        for events in (first, second, other):
            events.close()


def test_a_slow_follower_loses_its_oldest_events_and_is_told_how_many() -> None:
    watcher = Watcher("cam", limit=4)
    for seq in range(10):
        watcher.put({"type": "result", "seq": seq})
    taken = watcher.take(timeout=TIMEOUT_S)
    assert taken == ([{"type": "result", "seq": seq} for seq in range(6, 10)], 6)
    assert watcher.take(timeout=0.01) == ([], 0)  # nothing new, nothing more dropped
    watcher.close()
    assert watcher.take(timeout=TIMEOUT_S) is None


def test_a_slow_follower_loses_only_its_own_oldest_events(served: Served) -> None:
    """Per-follower queues: one that is not read keeps its newest `limit` events and counts the rest;
    another follower of the same stream gets them all."""
    slow = served.fanout.watch("cam", limit=3)
    reader = Events(served.port, "cam")
    try:
        wait_until(lambda: served.fanout.watching("cam") == 2, "two followers")
        for seq in range(8):
            served.results.put(result("cam", seq, f"frame {seq}"))
        assert [reader.next()["seq"] for _ in range(8)] == list(range(8))  # type: ignore[index]
        events, dropped = slow.take(timeout=TIMEOUT_S) or ([], 0)
        assert ([e["seq"] for e in events], dropped) == ([5, 6, 7], 5)
    finally:
        reader.close()
        served.fanout.unwatch(slow)


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/streams/bad%20id/events", 400, "stream id 'bad id': 1-128 characters of A-Z a-z 0-9 . _ : -"),
        (f"/api/streams/{'x' * 129}/events", 400, f"stream id '{'x' * 129}': 1-128 characters"),
    ],
)
def test_a_bad_stream_id_is_a_400_with_a_json_error(
    served: Served, path: str, status: int, message: str
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        body = json.loads(answer.read())
    finally:
        connection.close()
    assert answer.status == status
    assert answer.headers["Content-Type"] == "application/json"
    assert body["message"].startswith(message)
    assert body["details"][0]["reason"] == "INVALID_ARGUMENT"


def test_without_a_sidecar_the_events_are_not_served() -> None:
    server = UiServer(0, PageConfig("/api", "a test"), 1 << 20)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=TIMEOUT_S)
        connection.request("GET", "/config.json")
        assert json.loads(connection.getresponse().read())["streams"] is False
        connection.request("GET", "/api/streams/cam/events")
        answer = connection.getresponse()
        body = json.loads(answer.read())
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
        serving.join(TIMEOUT_S)
    assert answer.status == 404
    assert body["message"] == "streams need a Dapr sidecar: run classifier ui with one (docs/ui.md)"


BIG = "x" * 40_000  # a result this big fills the socket's buffers in a few hundred events


def test_a_browser_that_does_not_read_is_told_what_it_missed(served: Served) -> None:
    """A browser that stops reading: the socket's buffers fill, then its queue; the oldest queued events go
    and the next event it reads says how many. Each seq comes at most once, in order."""
    reader = Events(served.port, "cam")
    try:
        wait_until(lambda: served.fanout.watching("cam") == 1, "the follower")
        for seq in range(1000):  # 40 MB: more than the buffers and the queue (256 events) can hold
            served.results.put(result("cam", seq, BIG))
        wait_until(served.results.empty, "every result taken by the fan-out")
        seqs, dropped = [], 0
        while not seqs or seqs[-1] != 999:
            event = reader.next()
            assert event is not None
            if event["type"] == "dropped":
                dropped += event["count"]
            else:
                seqs.append(event["seq"])
    finally:
        reader.close()
    assert dropped > 0 and len(seqs) + dropped == 1000
    assert seqs == sorted(set(seqs))


def test_a_browser_gone_while_its_events_are_written_is_forgotten(served: Served) -> None:
    reader = Events(served.port, "cam")
    try:
        wait_until(lambda: served.fanout.watching("cam") == 1, "the follower")
        for seq in range(300):  # 12 MB: the server is left writing to the full socket
            served.results.put(result("cam", seq, BIG))
        wait_until(served.results.empty, "every result taken by the fan-out")
    finally:
        reader.close()  # with unread data: a reset, which the blocked write gets
    wait_until(lambda: served.fanout.watching("cam") == 0, "the follower forgotten")


def test_a_follower_after_the_fan_out_closed_gets_an_ended_response(served: Served) -> None:
    served.fanout.close()
    reader = Events(served.port, "cam")
    try:
        assert reader.response.status == 200 and reader.next() is None
    finally:
        reader.close()
    wait_until(lambda: served.fanout.watching("cam") == 0, "the follower forgotten")


def test_an_idle_stream_gets_a_keep_alive_comment(served: Served) -> None:
    """Nothing to send for KEEPALIVE_S: an SSE comment, so that proxies keep the response open."""
    from service.ui.server import KEEPALIVE_S

    assert KEEPALIVE_S < TIMEOUT_S  # the socket's timeout: the comment comes before it
    reader = Events(served.port, "quiet")
    try:
        assert reader.response.readline() == b": following\n"
        assert reader.response.readline() == b"\n"
        assert reader.response.readline() == b": keep-alive\n"
    finally:
        reader.close()
