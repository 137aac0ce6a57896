"""Every use of wasmtime-py's private API (its ctypes bindings of wasmtime's C API), in one place.

wasmtime-py wraps most of the C API; three things this host needs it does not (or not safely):
guest output captured without a finalizer, stdin served from memory, and an epoch deadline set
from inside a host call. `check()` verifies that the private names still exist with the shapes
used here; tests/test_host.py calls it, so an upgrade that changes them fails loudly there.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
from collections.abc import Callable

import wasmtime
from wasmtime import _bindings, _ffi

# Captured stdout/stderr, bound to WASI through wasmtime's C API directly. wasmtime-py's
# `stdout_custom` registers a finalizer that takes the GIL from whichever tokio thread
# drops the stream last, often after the run and sometimes while Python is exiting: the
# interpreter then ends that thread with pthread_exit, which cannot unwind through Rust,
# and the process aborts. So: no finalizer; the sink is looked up by key for each write
# (a write finishes before the guest's fd_write returns) and forgotten when the run ends.
_OutputCallback, _, _Finalizer = _bindings._wasi_config_set_stdout_custom.argtypes[1:]
_NO_FINALIZER = _Finalizer()  # a NULL function pointer
_sinks: dict[int, Callable[[bytes], int]] = {}
_sink_keys = itertools.count(1)


@_OutputCallback  # type: ignore[untyped-decorator]
def _write_to_sink(key: int | None, data: ctypes._Pointer, size: int) -> int:  # type: ignore[type-arg]
    try:
        sink = _sinks.get(key or 0)
        return sink(ctypes.string_at(data, size)) if sink is not None else -errno.EIO
    except BaseException:  # nothing may unwind into wasmtime
        return -errno.EIO


def capture_output(wasi: wasmtime.WasiConfig, stream: str, sink: Callable[[bytes], int]) -> int:
    """Send the guest's `stream` ("stdout" or "stderr") to `sink` (bytes -> count written, or
    -1 when full); returns the key to `forget_output` once the run is over."""
    key = next(_sink_keys)
    _sinks[key] = sink
    setter = getattr(_bindings, f"wasi_config_set_{stream}_custom")
    setter(wasi.ptr(), _write_to_sink, ctypes.c_void_p(key), _NO_FINALIZER)
    return key


def forget_output(key: int) -> None:
    _sinks.pop(key, None)


def set_stdin_bytes(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Serve the guest's stdin from memory. wasmtime's C API can; wasmtime-py binds the
    function but does not wrap it (its public API only takes a file path)."""
    vec = _ffi.wasm_byte_vec_t()
    buffer = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(_ffi.wasm_byte_t))
    _ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buffer)
    _bindings.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))  # takes ownership


def interrupt_on_return(caller: wasmtime.Caller) -> None:
    """Trap at the guest's next epoch check (its next call or loop back-edge). wasmtime-py
    exposes set_epoch_deadline on Store only; a Caller carries the same context."""
    _bindings.wasmtime_context_set_epoch_deadline(caller._context(), 0)


def check() -> None:
    """Raise AssertionError if the private names used here changed shape."""
    for stream in ("stdout", "stderr"):
        assert callable(getattr(_bindings, f"wasi_config_set_{stream}_custom", None)), f"no {stream} setter"
        c_function = getattr(_bindings, f"_wasi_config_set_{stream}_custom", None)
        assert c_function is not None and len(c_function.argtypes) == 4, f"the {stream} setter changed"
    assert callable(_bindings.wasi_config_set_stdin_bytes), "wasi_config_set_stdin_bytes is gone"
    set_deadline = _bindings.wasmtime_context_set_epoch_deadline
    assert callable(set_deadline), "wasmtime_context_set_epoch_deadline is gone"
    assert hasattr(_ffi, "wasm_byte_vec_t") and callable(_ffi.wasm_byte_vec_new), "wasm_byte_vec changed"
    assert callable(getattr(wasmtime.Caller, "_context", None)), "Caller._context is gone"
