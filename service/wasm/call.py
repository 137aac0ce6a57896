"""Per-run state: what one guest run may touch, created for it and dropped after.

Host functions are defined once on a shared Linker, so they find the state of the run
they serve through `current()`: a Store runs on one thread, and `running()` binds the
run's GuestCall to that thread for the duration of the guest's `_start`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
    max_contexts: int = 16  # live wasi-nn execution contexts and TFLite sessions per run
    max_loaded_graphs: int = 4  # models a guest may pass as bytes (`load`, `create_session`) per run


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
    # wasmedge_tensorflowlite sessions, each an execution context of this run only. The
    # legacy ABI's i64 handles count from 1 (0 means failure), sessions and output tensors
    # on one counter; the plugin ABI's u32 ids count from 0, a deleted id is reused first.
    legacy_sessions: dict[int, ExecutionContext] = field(default_factory=dict)
    legacy_tensors: dict[int, tuple[int, int]] = field(default_factory=dict)  # -> (session, output)
    next_legacy_handle: int = 1
    plugin_sessions: list[ExecutionContext | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why host calls failed, for the caller
    # The guest's own stderr (set by the host for the run), for what the guest's user must
    # see: WasmEdge printed its host modules' errors there.
    stderr: Callable[[bytes], object] | None = None
    unsupported_calls: set[str] = field(default_factory=set)  # said on stderr once per run
    deadline_hit: bool = False
    host_seconds: dict[str, float] = field(default_factory=dict)  # time in host work, by kind

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = time.monotonic() + self.limits.timeout_s

    def note(self, message: str) -> None:
        if len(self.notes) < 32:
            self.notes.append(message)

    def tell_guest_user(self, message: str) -> None:
        """A line on the guest's stderr (in the notes if the run has none)."""
        if self.stderr is not None:
            self.stderr(f"{message}\n".encode())
        else:
            self.note(message)

    def past_deadline(self) -> bool:
        """Host functions check this before expensive work: a running invoke or decode
        cannot be interrupted by the epoch deadline."""
        if time.monotonic() >= self.deadline:
            if not self.deadline_hit:
                self.deadline_hit = True
                self.note("deadline exceeded")
            return True
        return False

    def live_contexts(self) -> int:
        """Execution contexts and sessions holding an interpreter now."""
        return (
            sum(c is not None for c in self.contexts)
            + len(self.legacy_sessions)
            + sum(s is not None for s in self.plugin_sessions)
        )

    def add_host_time(self, kind: str, seconds: float) -> None:
        self.host_seconds[kind] = self.host_seconds.get(kind, 0.0) + seconds

    def close(self) -> None:
        """Return every borrowed interpreter to its pool."""
        for context in [*self.contexts, *self.legacy_sessions.values(), *self.plugin_sessions]:
            if context is not None:
                context.release()
        self.contexts.clear()
        self.graphs.clear()
        self.legacy_sessions.clear()
        self.legacy_tensors.clear()
        self.plugin_sessions.clear()


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
