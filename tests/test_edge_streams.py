"""The edge's stream bookkeeping and batch spreading (service/edge/streams.py), in process: the
frames a stream never delivered, the streams it forgets, and a batch on a pool that is shut
down or whose handler fails on a helper thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.edge.streams import StreamTracker, run_spread


def tracker(max_streams: int = 2, window: int = 8) -> tuple[StreamTracker, list[int], list[int]]:
    skipped: list[int] = []
    repeated: list[int] = []
    return (
        StreamTracker(skipped.append, lambda: repeated.append(1), window=window, max_streams=max_streams),
        skipped,
        repeated,
    )


def test_frames_not_seen_yet_are_missing_until_they_come_or_fall_behind_the_window() -> None:
    streams, skipped, repeated = tracker()
    assert streams.missing("never-seen") == 0
    streams.seen("a", 1)
    streams.seen("a", 5)  # 2, 3, 4 may still come
    assert (streams.missing("a"), skipped) == (3, [])
    streams.seen("a", 3)  # late, not lost
    streams.seen("a", 3)  # again: delivered twice
    assert (streams.missing("a"), repeated) == (2, [1])
    streams.seen("a", 12)  # 2 is now more than the window (8) behind: skipped; 4, 6-11 missing
    assert skipped == [1] and streams.missing("a") == 7


def test_the_least_recently_seen_stream_is_forgotten_past_the_limit() -> None:
    streams, skipped, repeated = tracker(max_streams=2)
    streams.seen("a", 1)
    streams.seen("b", 1)
    streams.seen("a", 2)  # a is now the most recent
    streams.seen("c", 1)  # b is forgotten
    streams.seen("b", 6)  # a new stream again: nothing missing, nothing skipped
    assert (streams.missing("b"), skipped, repeated) == (0, [], [])
    streams.seen("c", 4)
    assert streams.missing("c") == 2  # c was kept (a was dropped for b)
    streams.seen("a", 2)  # a was forgotten too: not a repeat
    assert repeated == []


def test_a_batch_on_a_pool_that_is_shut_down_runs_on_the_caller() -> None:
    pool = ThreadPoolExecutor(2)
    pool.shutdown()
    threads: set[str] = set()

    def handle(item: int) -> int:
        threads.add(threading.current_thread().name)
        return item * 2

    assert run_spread(pool, [1, 2, 3], handle, helpers=2) == [2, 4, 6]
    assert threads == {threading.current_thread().name}


def test_an_entry_whose_handler_raises_on_a_helper_fails_the_batch_saying_so() -> None:
    """The entry the helper took has no answer: the batch is not answered with one missing."""
    caller = threading.current_thread()
    helper_took_one = threading.Event()

    def handle(item: int) -> int:
        if threading.current_thread() is caller:
            assert helper_took_one.wait(30)  # so that the helper gets an entry of its own
            return item
        helper_took_one.set()
        raise ValueError("a bug in the handler")

    with ThreadPoolExecutor(1) as pool, pytest.raises(RuntimeError) as failed:
        run_spread(pool, [1, 2], handle, helpers=1)
    assert str(failed.value) == "1 of 2 batch entries got no answer"
