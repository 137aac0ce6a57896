"""WASI preview1 `poll_oneoff` with every wait bounded by the run's deadline.

wasmtime's own `poll_oneoff` blocks the thread for as long as the guest asks (`sleep(3600)`
holds a worker for an hour) and the epoch deadline cannot interrupt host code. This one
replaces it in the Linker: a clock subscription sleeps at most until the run's deadline,
after which the run is marked past its deadline and its epoch deadline is moved to now,
so the guest traps as soon as it runs wasm again (waiting for the epoch ticker instead
lost the race on a loaded machine: the guest returned and ran to completion). Stdin is
bytes in memory and files are local, so fd subscriptions are reported ready at once
(with `nbytes` 0).

Layouts (witx, wasi_snapshot_preview1): subscription 48 bytes (userdata u64 @0, tag u8
@8, clock: id u32 @16, timeout u64 @24, precision u64 @32, flags u16 @40; fd: fd u32 @16);
event 32 bytes (userdata u64 @0, error u16 @8, type u8 @10, nbytes u64 @16, flags u16 @24).
"""

from __future__ import annotations

import struct
import time

import wasmtime

from . import call as guest_call
from .abi import WasiErrno, replace_wasi_function
from .memory import GuestMemoryError, MissingMemory
from .wasmtime_capi import interrupt_on_return

SUBSCRIPTION_SIZE = 48
EVENT_SIZE = 32
MAX_SUBSCRIPTIONS = 4096


TAG_CLOCK, TAG_FD_READ, TAG_FD_WRITE = 0, 1, 2
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
ABSTIME = 1


class _Invalid(Exception):
    pass


def _wait_s(call: guest_call.GuestCall, clock_id: int, timeout_ns: int, flags: int) -> float:
    """How long a clock subscription waits from now."""
    if clock_id not in (CLOCK_REALTIME, CLOCK_MONOTONIC):
        raise _Invalid(f"clock {clock_id} cannot be waited on")
    if not flags & ABSTIME:
        return timeout_ns / 1e9
    if clock_id == CLOCK_REALTIME:
        return (timeout_ns - time.time_ns()) / 1e9
    # wasmtime's monotonic clock counts from the start of the run.
    started = call.deadline - call.limits.timeout_s
    return timeout_ns / 1e9 - (time.monotonic() - started)


def poll_oneoff(caller: wasmtime.Caller, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int) -> int:
    call = guest_call.current()
    try:
        memory = call.memory(caller)
        if count == 0 or count > MAX_SUBSCRIPTIONS:
            raise _Invalid(f"{count} subscriptions")
        subscriptions = memory.read_bytes(in_ptr, count * SUBSCRIPTION_SIZE)
        memory.view(out_ptr, count * EVENT_SIZE)
        memory.view(nevents_ptr, 4)
        ready: list[tuple[int, int]] = []  # (userdata, tag) of fd subscriptions
        clocks: list[tuple[int, float]] = []  # (userdata, seconds to wait)
        for offset in range(0, len(subscriptions), SUBSCRIPTION_SIZE):
            userdata, tag = struct.unpack_from("<QB", subscriptions, offset)
            if tag == TAG_CLOCK:
                clock_id = struct.unpack_from("<I", subscriptions, offset + 16)[0]
                timeout_ns, _precision = struct.unpack_from("<QQ", subscriptions, offset + 24)
                flags = struct.unpack_from("<H", subscriptions, offset + 40)[0]
                clocks.append((userdata, _wait_s(call, clock_id, timeout_ns, flags)))
            elif tag in (TAG_FD_READ, TAG_FD_WRITE):
                ready.append((userdata, tag))
            else:
                raise _Invalid(f"subscription type {tag}")

        fired: list[tuple[int, int]] = []
        if not ready and clocks:
            wait = max(min(seconds for _, seconds in clocks), 0.0)
            time_left = call.deadline - time.monotonic()
            if wait >= time_left:
                time.sleep(max(time_left, 0.0))
                call.past_deadline()
                interrupt_on_return(caller)
            else:
                time.sleep(wait)
            fired = [(userdata, TAG_CLOCK) for userdata, seconds in clocks if seconds <= wait]
        else:
            fired = ready + [(userdata, TAG_CLOCK) for userdata, seconds in clocks if seconds <= 0]

        events = bytearray(EVENT_SIZE * len(fired))
        for i, (userdata, tag) in enumerate(fired):
            struct.pack_into("<QHB", events, i * EVENT_SIZE, userdata, WasiErrno.SUCCESS, tag)
        memory.write(out_ptr, bytes(events))
        memory.write_u32(nevents_ptr, len(fired))
        return WasiErrno.SUCCESS
    except MissingMemory:
        raise  # a trap, as in wasmtime
    except GuestMemoryError as exc:
        call.note(f"poll_oneoff: {exc}")
        return WasiErrno.FAULT
    except _Invalid as exc:
        call.note(f"poll_oneoff: {exc}")
        return WasiErrno.INVAL


def define(linker: wasmtime.Linker) -> None:
    """Replace WASI's poll_oneoff (call after `define_wasi`)."""
    replace_wasi_function(linker, "poll_oneoff", 4, poll_oneoff)
