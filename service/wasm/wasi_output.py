"""WASI preview1 `fd_write` with a run's captured stdout and stderr written by the host itself.

wasmtime's C API captures output through an async stream: every write, and every run even
without one, wakes one of its tokio threads, which then takes the GIL to call back into
Python (~10 context switches and ~0.1 ms a request, docs/performance.md). Here a write to
fd 1 or 2 of a run that captures them goes straight from guest memory to the run's sink
(`GuestCall.output_sinks`); every other write (a file the guest opened, or inherited stdio)
goes to wasmtime's own `fd_write`, taken from a Linker that holds WASI alone.

WASI itself keeps its default stdout and stderr (sinks): `fd_fdstat_get` and the rest still
answer for fds 1 and 2, and a guest that renumbers a file onto them writes into the capture.

Layout (witx, wasi_snapshot_preview1): ciovec 8 bytes (buf u32 @0, buf_len u32 @4).
"""

from __future__ import annotations

import wasmtime

from . import call as guest_call
from .abi import WASI_MODULE, WasiErrno, replace_wasi_function
from .memory import GuestMemoryError, MissingMemory

MAX_IOVECS = 1024  # IOV_MAX


# wasmtime's fd_write reads the iovecs from its caller's `memory` export, and a host function
# calling it has no caller instance: this module calls it for the host, re-exporting the guest's
# memory as its own. Instantiated in a run's Store on its first write to another fd.
_FORWARDER = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "guest" "memory" (memory 0))
  (export "memory" (memory 0))
  (func (export "fd_write") (param i32 i32 i32 i32) (result i32)
    (call $fd_write (local.get 0) (local.get 1) (local.get 2) (local.get 3))))
"""


def define(linker: wasmtime.Linker) -> None:
    """Replace WASI's fd_write (call after `define_wasi`)."""
    wasi_alone = wasmtime.Linker(linker.engine)
    wasi_alone.define_wasi()
    forwarder = wasmtime.Module(linker.engine, _FORWARDER)

    def wasi_fd_write(caller: wasmtime.Caller, call: guest_call.GuestCall) -> wasmtime.Func:
        """wasmtime's own fd_write for this run, through the forwarder (made once per run)."""
        if call.wasi_fd_write is None:
            if call.guest_memory is None:
                raise MissingMemory("guest exports no memory")
            found = wasi_alone.get(caller, WASI_MODULE, "fd_write")
            instance = wasmtime.Instance(caller, forwarder, [found, call.guest_memory])
            export = instance.exports(caller)["fd_write"]
            assert isinstance(export, wasmtime.Func)
            call.wasi_fd_write = export
        return call.wasi_fd_write

    def fd_write(caller: wasmtime.Caller, fd: int, iovs_ptr: int, iovs_len: int, nwritten_ptr: int) -> int:
        call = guest_call.current()
        sink = call.output_sinks.get(fd)
        if sink is None:
            result = wasi_fd_write(caller, call)(caller, fd, iovs_ptr, iovs_len, nwritten_ptr)
            assert isinstance(result, int)
            return result
        try:
            memory = call.memory(caller)
            if iovs_len > MAX_IOVECS:
                call.note(f"fd_write: {iovs_len} iovecs")
                return WasiErrno.INVAL
            fields = memory.read_u32s(iovs_ptr, 2 * iovs_len)
            data = b"".join(memory.read_bytes(fields[i], fields[i + 1]) for i in range(0, len(fields), 2))
            memory.view(nwritten_ptr, 4)
            written = sink(data)
            if written < 0:
                return WasiErrno.NOSPC  # the run's output cap is reached
            memory.write_u32(nwritten_ptr, written)
            return WasiErrno.SUCCESS
        except MissingMemory:
            raise  # a trap, as in wasmtime
        except GuestMemoryError as exc:
            call.note(f"fd_write: {exc}")
            return WasiErrno.FAULT

    replace_wasi_function(linker, "fd_write", 4, fd_write)
