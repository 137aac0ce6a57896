"""Bounds-checked, zero-copy access to a guest's linear memory from a host function.

wasmtime-py's Memory.read silently clamps out-of-range reads, so every (ptr, len) a
guest passes is checked here against the memory's current size first.
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
    """A view of the calling guest's memory, valid only during one host call
    (memory.grow may move it)."""

    def __init__(self, caller: wasmtime.Caller, memory: wasmtime.Memory | None = None) -> None:
        """`memory`: the run's export, found once per run (GuestCall.guest_memory), since
        looking it up through the caller costs more than the rest of a small host call."""
        export = memory if memory is not None else caller.get("memory")
        if not isinstance(export, wasmtime.Memory):
            raise MissingMemory("guest exports no memory")
        self.bytes = np.frombuffer(export.get_buffer_ptr(caller), dtype=np.uint8)  # type: ignore[call-overload]
        self.size = self.bytes.size

    def view(self, ptr: int, length: int) -> np.ndarray:
        """A writable uint8 view of [ptr, ptr+length), or GuestMemoryError."""
        if ptr < 0 or length < 0 or ptr + length > self.size:
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
