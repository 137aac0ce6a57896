"""What the app answers daprd for a pub/sub event: SUCCESS, DROP or RETRY.

A pure decision, apart from the handlers that run the request and publish its result, so that
every case is tested directly (and mutation-tested in process). daprd redelivers a RETRY per
components/resiliency.yaml, sends a DROP to the dead-letter topic, and forgets a SUCCESS.
"""

from __future__ import annotations

from typing import Literal

from ..errors import ErrorKind

Answer = Literal["success", "drop", "retry"]

# Faults that may pass: the event is redelivered (RETRY) rather than dropped.
TRANSIENT = frozenset({ErrorKind.UNAVAILABLE})


def publishes_error(kind: ErrorKind) -> bool:
    """Whether a failed image event's requester is told now (an error result, then DROP);
    a transient fault is not told: the event is redelivered and may yet succeed."""
    return kind not in TRANSIENT


def image_answer(error: ErrorKind | None, published: bool) -> Answer:
    """The answer for an image event: `error` is how its request failed (None: it succeeded),
    `published` whether its result (or error result) reached the results topic. An event
    whose requester was not told is redelivered: nothing is lost."""
    if error is not None and not publishes_error(error):
        return "retry"
    if not published:
        return "retry"
    return "success" if error is None else "drop"


def update_answer(error: ErrorKind | None) -> Answer:
    """The answer for a model or guest update event: `error` is how applying it failed (None:
    applied). A transient fault is retried; any other would fail again: dropped."""
    if error is None:
        return "success"
    return "retry" if error in TRANSIENT else "drop"
