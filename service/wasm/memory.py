"""Bounds-checked, zero-copy access to a guest's linear memory from a host function.

wasmtime-py's Memory.read silently clamps out-of-range reads, so every (ptr, len) a
guest passes is checked here against the memory's size first.
"""

from __future__ import annotations

import struct

import numpy as np
import wasmtime


class GuestMemoryError(Exception):
    """A guest pointer or length falls outside its linear memory."""


class MissingMemory(wasmtime.Trap):
    """The guest exports no linear memory named `memory` (a trap, as in WasmEdge)."""


class GuestMemory:
    """A run's linear memory, mapped once for every host call of the run (GuestCall.memory).

    The Engine keeps memories in place (`memory_may_move` off, host.py) and wasm memory only
    grows, so a view of the size it had once stays valid for the Store's life: a host call pays
    no C call to find it. A range past that size re-reads the size first (the guest may have
    grown its memory since), through the store context of the host call in progress.
    """

    def __init__(self, memory: wasmtime.Memory, store: wasmtime.Caller | wasmtime.Store) -> None:
        self._memory = memory
        self.store = store  # GuestCall.memory sets the caller of each host call
        self._map()

    def _map(self) -> None:
        self.bytes = np.frombuffer(self._memory.get_buffer_ptr(self.store), dtype=np.uint8)  # type: ignore[call-overload]
        self.size = self.bytes.size

    def _grown(self) -> bool:
        if self._memory.data_len(self.store) == self.size:
            return False
        self._map()
        return True

    def view(self, ptr: int, length: int) -> np.ndarray:
        """A writable uint8 view of [ptr, ptr+length), or GuestMemoryError."""
        end = ptr + length
        if ptr < 0 or length < 0 or (end > self.size and not (self._grown() and end <= self.size)):
            raise GuestMemoryError(f"range {ptr:#x}+{length} is outside guest memory ({self.size})")
        return self.bytes[ptr : ptr + length]

    def read_bytes(self, ptr: int, length: int) -> bytes:
        return self.view(ptr, length).tobytes()

    def read_u32s(self, ptr: int, count: int) -> tuple[int, ...]:
        """`count` little-endian u32 values (alignment is not required). struct, not numpy:
        a few values, on every host call, where numpy's per-call overhead dominates."""
        self.view(ptr, 4 * count)
        return struct.unpack_from(f"<{count}I", self.bytes, ptr)

    def write_u32(self, ptr: int, value: int) -> None:
        self.view(ptr, 4)
        struct.pack_into("<I", self.bytes, ptr, value)

    def write(self, ptr: int, data: np.ndarray | bytes) -> None:
        source = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
        self.view(ptr, source.nbytes)[:] = source.reshape(-1).view(np.uint8)
