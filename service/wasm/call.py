"""Per-run state: what one guest run may touch, created for it and dropped after.

Host functions are defined once on a shared Linker, so they find the state of the run
they serve through `current()`: a Store runs on one thread, and `running()` binds the
run's GuestCall to that thread for the duration of the guest's `_start`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..imaging import DEFAULT_MAX_PIXELS
from ..inference.cache import GraphCache
from ..inference.model import ExecutionContext, Graph


@dataclass(frozen=True)
class GuestLimits:
    """Sandbox limits applied to every guest run."""

    timeout_s: float = 10.0
    memory_bytes: int = 256 << 20
    output_bytes: int = 1 << 20  # stdout and stderr, each
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_contexts: int = 16  # wasi-nn execution contexts per run
    max_loaded_graphs: int = 4  # models a guest may pass as bytes to `load` per run


@dataclass
class GuestCall:
    """Handles, deadline and diagnostics of one guest run."""

    limits: GuestLimits = field(default_factory=GuestLimits)
    # Models the guest may open by name (wasi-nn load_by_name), fixed at the start of
    # the run so a new model version never changes a request in flight.
    named_graphs: Mapping[str, Graph] = field(default_factory=dict)
    graph_cache: GraphCache | None = None
    deadline: float = field(default=0.0)
    graphs: list[Graph | None] = field(default_factory=list)
    contexts: list[ExecutionContext | None] = field(default_factory=list)
    graph_ids_by_name: dict[str, int] = field(default_factory=dict)
    loaded_graphs: int = 0
    notes: list[str] = field(default_factory=list)  # why host calls failed, for the caller
    deadline_hit: bool = False
    host_seconds: dict[str, float] = field(default_factory=dict)  # time in host work, by kind

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = time.monotonic() + self.limits.timeout_s

    def note(self, message: str) -> None:
        if len(self.notes) < 32:
            self.notes.append(message)

    def past_deadline(self) -> bool:
        """Host functions check this before expensive work: a running invoke or decode
        cannot be interrupted by the epoch deadline."""
        if time.monotonic() >= self.deadline:
            if not self.deadline_hit:
                self.deadline_hit = True
                self.note("deadline exceeded")
            return True
        return False

    def add_host_time(self, kind: str, seconds: float) -> None:
        self.host_seconds[kind] = self.host_seconds.get(kind, 0.0) + seconds

    def close(self) -> None:
        """Return every borrowed interpreter to its pool."""
        for context in self.contexts:
            if context is not None:
                context.release()
        self.contexts.clear()
        self.graphs.clear()


_local = threading.local()


def current() -> GuestCall:
    call = getattr(_local, "call", None)
    if call is None:
        raise RuntimeError("host function called outside a guest run")
    return call


@contextmanager
def running(call: GuestCall) -> Iterator[GuestCall]:
    previous = getattr(_local, "call", None)
    _local.call = call
    try:
        yield call
    finally:
        _local.call = previous
        call.close()
