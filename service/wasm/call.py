"""Per-run state: what one guest run may touch, created for it and dropped after.

Host functions are defined once on a shared Linker, so they find the state of the run
they serve through `current()`: a Store runs on one thread, and `running()` binds the
run's GuestCall to that thread for the duration of the guest's `_start`. Each host ABI
keeps its handles in a context object of its own (`GuestCall.context(Kind)`), made on
first use in the run and closed with it; the GuestCall holds only what is run-wide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import wasmtime

from ..imaging import DEFAULT_MAX_PIXELS
from ..inference.backend import Graph
from ..inference.cache import GraphCache
from .memory import GuestMemory, MissingMemory


@dataclass(frozen=True)
class GuestLimits:
    """Sandbox limits applied to every guest run."""

    timeout_s: float = 10.0
    memory_bytes: int = 256 << 20
    output_bytes: int = 1 << 20  # stdout and stderr, each
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_contexts: int = 16  # live wasi-nn execution contexts and TFLite sessions per run
    max_loaded_graphs: int = 4  # models a guest may pass as bytes (`load`, `create_session`) per run


class AbiContext(Protocol):
    """The per-run state of one host ABI: its handle tables."""

    def live_contexts(self) -> int:
        """Execution contexts it holds now (each holds an interpreter)."""
        ...

    def close(self) -> None:
        """Release everything it holds (the run is over)."""


C = TypeVar("C", bound=AbiContext)


@dataclass
class GuestCall:
    """Handles, deadline and diagnostics of one guest run."""

    limits: GuestLimits = field(default_factory=GuestLimits)
    # Models the guest may open by name (wasi-nn load_by_name), fixed at the start of
    # the run so a new model version never changes a request in flight.
    named_graphs: Mapping[str, Graph] = field(default_factory=dict)
    graph_cache: GraphCache | None = None
    deadline: float = field(default=0.0)
    loaded_graphs: int = 0  # models loaded from guest bytes this run, by any ABI
    notes: list[str] = field(default_factory=list)  # why host calls failed, for the caller
    # The guest's own stderr (set by the host for the run), for what the guest's user must
    # see: WasmEdge printed its host modules' errors there.
    stderr: Callable[[bytes], object] | None = None
    deadline_hit: bool = False
    host_seconds: dict[str, float] = field(default_factory=dict)  # time in host work, by kind
    guest_memory: wasmtime.Memory | None = None  # the instance's `memory` export, set once instantiated
    # The run's captured stdout and stderr by fd (bytes -> count kept, or -1 once full), written
    # by the host's fd_write (wasi_output.py); empty when the guest inherits the process's stdio.
    output_sinks: Mapping[int, Callable[[bytes], int]] = field(default_factory=dict)
    wasi_fd_write: wasmtime.Func | None = None  # wasmtime's own fd_write in this run's Store
    _abi_contexts: dict[type, AbiContext] = field(default_factory=dict)
    _memory: GuestMemory | None = None  # guest_memory mapped, on the run's first host call that needs it

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

    def memory(self, caller: wasmtime.Caller) -> GuestMemory:
        """The guest's memory, for the host call `caller` is in (MissingMemory if it exports none)."""
        memory = self._memory
        if memory is not None:
            memory.store = caller
            return memory
        export = self.guest_memory if self.guest_memory is not None else caller.get("memory")
        if not isinstance(export, wasmtime.Memory):
            raise MissingMemory("guest exports no memory")
        self._memory = GuestMemory(export, caller)
        return self._memory

    def context(self, kind: type[C]) -> C:
        """This run's context of one host ABI, made on first use."""
        existing = self._abi_contexts.get(kind)
        if existing is None:
            existing = self._abi_contexts[kind] = kind()
        return existing  # type: ignore[return-value]

    def live_contexts(self) -> int:
        """Execution contexts holding an interpreter now, over every ABI (the run's limit)."""
        return sum(context.live_contexts() for context in self._abi_contexts.values())

    def add_host_time(self, kind: str, seconds: float) -> None:
        self.host_seconds[kind] = self.host_seconds.get(kind, 0.0) + seconds

    def close(self) -> None:
        """Return every borrowed interpreter to its pool, and drop the view of the guest's memory
        (its Store is about to go)."""
        self._memory = None
        for context in self._abi_contexts.values():
            context.close()


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
