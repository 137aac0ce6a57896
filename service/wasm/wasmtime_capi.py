"""Every use of wasmtime-py's private API (its ctypes bindings of wasmtime's C API), in one place.

wasmtime-py wraps most of the C API; two things this host needs it does not: stdin served from
memory, and an epoch deadline set from inside a host call. `check()` verifies that the private
names still exist with the shapes used here; tests/test_host.py calls it, so an upgrade that
changes them fails loudly there.
"""

from __future__ import annotations

import ctypes

import wasmtime
from wasmtime import _bindings, _ffi


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
    assert callable(_bindings.wasi_config_set_stdin_bytes), "wasi_config_set_stdin_bytes is gone"
    set_deadline = _bindings.wasmtime_context_set_epoch_deadline
    assert callable(set_deadline), "wasmtime_context_set_epoch_deadline is gone"
    assert hasattr(_ffi, "wasm_byte_vec_t") and callable(_ffi.wasm_byte_vec_new), "wasm_byte_vec changed"
    assert callable(getattr(wasmtime.Caller, "_context", None)), "Caller._context is gone"
