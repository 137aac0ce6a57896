"""Every use of wasmtime-py's private API (its ctypes bindings of wasmtime's C API), in one place.

wasmtime-py wraps most of the C API; five things this host needs it does not: stdin served from
memory, argv set from a cached C array, one export found by name, an epoch deadline set from
inside a host call, and host functions defined through the C API's unchecked callback. `check()`
verifies that the private names still exist with the shapes used here; tests/test_host.py calls
it, so an upgrade that changes them fails loudly there.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _bindings, _extern, _ffi, _func


def set_stdin_bytes(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Serve the guest's stdin from memory. wasmtime's C API can; wasmtime-py binds the
    function but does not wrap it (its public API only takes a file path)."""
    vec = _ffi.wasm_byte_vec_t()
    buffer = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(_ffi.wasm_byte_t))
    _ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buffer)
    _bindings.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))  # takes ownership


def set_argv(wasi: wasmtime.WasiConfig, argv: tuple[str, ...]) -> None:
    """WasiConfig.argv from a C array made once per distinct command line: wasmtime-py encodes
    every argument into a fresh array each time, ~20 of them a request for the built-in guest,
    whose command line repeats per model and top-k. wasmtime copies the strings."""
    if not _bindings.wasi_config_set_argv(wasi.ptr(), len(argv), _argv_array(argv)):
        raise wasmtime.WasmtimeError("failed to configure argv")


@functools.lru_cache(maxsize=256)
def _argv_array(argv: tuple[str, ...]) -> Any:
    array = (ctypes.c_char_p * len(argv))(*(arg.encode() for arg in argv))  # keeps the bytes alive
    return ctypes.cast(array, ctypes.POINTER(ctypes.POINTER(ctypes.c_char)))  # keeps the array alive


def instance_export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """One export by name, or None. wasmtime-py's `Instance.exports` wraps every export of the
    instance first; a run needs two of them."""
    item = _ffi.wasmtime_extern_t()
    encoded = name.encode()
    found = _bindings.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), encoded, len(encoded), ctypes.byref(item)
    )
    return _extern.wrap_extern(item) if found else None


def interrupt_on_return(caller: wasmtime.Caller) -> None:
    """Trap at the guest's next epoch check (its next call or loop back-edge). wasmtime-py
    exposes set_epoch_deadline on Store only; a Caller carries the same context."""
    _bindings.wasmtime_context_set_epoch_deadline(caller._context(), 0)


# -- host functions through the unchecked callback ---------------------------------------------
#
# wasmtime-py's own trampoline turns every argument and result into a `Val` and compares
# `ValType`s to pick the conversion: ~7 C calls and ~10 us a host call. The unchecked callback
# hands over the raw values (wasmtime_val_raw_t: one 16-byte slot each, the results written over
# the arguments); the types are fixed when the function is defined, so one precompiled `struct`
# reads every argument and writes the result. A Python exception becomes a trap exactly as in
# wasmtime-py: the exception is parked where wasmtime-py's call wrapper re-raises it once the
# guest's call returns.

_SLOT = 16  # sizeof(wasmtime_val_raw_t)
# The struct code of each value kind in its slot (little-endian, the value at the slot's start).
_SIGNED = {"i32": "i12x", "i64": "q8x"}
_UNSIGNED = {"i32": "I12x", "i64": "q8x"}  # pointers and lengths: i32 read as u32
_RESULT = {"i32": ("<I", 0xFFFFFFFF), "i64": ("<Q", 0xFFFFFFFFFFFFFFFF)}  # written wrapped, as wasm does


def _raw_kind(valtype: wasmtime.ValType) -> str:
    kind = str(valtype)
    if kind not in _RESULT:
        raise ValueError(f"host functions here take and return i32 and i64 only, not {valtype}")
    return kind


@dataclass(frozen=True, slots=True)
class _HostFunc:
    function: Callable[..., Any]
    frame: Any  # ctypes.c_char * (16 * slots): the values as one buffer
    params: struct.Struct | None  # reads every argument; None without any
    result: struct.Struct | None
    result_mask: int
    access_caller: bool


# By the `env` wasmtime passes back; dropped by _finalize. Taking an id and a dict insert or pop
# are each atomic under the GIL, which every ctypes callback holds: no lock.
_host_funcs: dict[int, _HostFunc] = {}
_host_func_ids = itertools.count(1)

# wasmtime_func_unchecked_callback_t with the values as an address, so one struct reads them all.
_callback_t = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.POINTER(_bindings.wasmtime_caller_t),
    ctypes.c_void_p,
    ctypes.c_size_t,
)


@_callback_t  # type: ignore[untyped-decorator]
def _unchecked_trampoline(env: int, caller_ptr: Any, values: int, _count: int) -> int:
    caller = wasmtime.Caller(caller_ptr)
    try:
        host = _host_funcs[env]
        frame: Any = host.frame.from_address(values) if values else None
        args = host.params.unpack_from(frame) if host.params is not None else ()
        result = host.function(caller, *args) if host.access_caller else host.function(*args)
        if host.result is not None:
            host.result.pack_into(frame, 0, result & host.result_mask)
        elif result is not None:
            raise wasmtime.WasmtimeError("callback produced results when it shouldn't")
        return 0
    except BaseException as exc:
        _func.LAST_EXCEPTION = exc  # type: ignore[assignment]  # re-raised by wasmtime-py when the guest's call returns
        trap = wasmtime.Trap("python exception")._consume()
        return ctypes.cast(trap, ctypes.c_void_p).value or 0
    finally:
        caller._invalidate()


_trampoline_as_bound = ctypes.cast(_unchecked_trampoline, _bindings.wasmtime_func_unchecked_callback_t)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # type: ignore[untyped-decorator]
def _finalize(env: int) -> None:
    _host_funcs.pop(env or 0, None)


def define_func(
    linker: wasmtime.Linker,
    module: str,
    name: str,
    func_type: wasmtime.FuncType,
    function: Callable[..., Any],
    *,
    access_caller: bool = False,
    unsigned: bool = False,
) -> None:
    """Linker.define_func through the unchecked callback: `function(caller, *args)` (or
    `function(*args)`), i32 and i64 values as Python ints (i32 arguments as u32 if `unsigned`),
    at most one result (wrapped to its type's width)."""
    params = [_raw_kind(t) for t in func_type.params]
    results = [_raw_kind(t) for t in func_type.results]
    if len(results) > 1:
        raise ValueError(f"{module} {name}: at most one result")
    codes = _UNSIGNED if unsigned else _SIGNED
    result_code, result_mask = _RESULT[results[0]] if results else ("", 0)
    env = next(_host_func_ids)
    _host_funcs[env] = _HostFunc(
        function=function,
        frame=ctypes.c_char * (_SLOT * max(len(params), len(results), 1)),
        params=struct.Struct("<" + "".join(codes[kind] for kind in params)) if params else None,
        result=struct.Struct(result_code) if results else None,
        result_mask=result_mask,
        access_caller=access_caller,
    )
    module_bytes, name_bytes = module.encode(), name.encode()
    error = _bindings.wasmtime_linker_define_func_unchecked(
        linker.ptr(),
        ctypes.create_string_buffer(module_bytes),
        len(module_bytes),
        ctypes.create_string_buffer(name_bytes),
        len(name_bytes),
        func_type.ptr(),
        _trampoline_as_bound,
        env,
        _finalize,
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


def check() -> None:
    """Raise AssertionError if the private names used here changed shape."""
    assert callable(_bindings.wasi_config_set_stdin_bytes), "wasi_config_set_stdin_bytes is gone"
    assert callable(_bindings.wasi_config_set_argv), "wasi_config_set_argv is gone"
    assert callable(_bindings.wasmtime_instance_export_get), "wasmtime_instance_export_get is gone"
    assert callable(getattr(_extern, "wrap_extern", None)), "wrap_extern is gone"
    set_deadline = _bindings.wasmtime_context_set_epoch_deadline
    assert callable(set_deadline), "wasmtime_context_set_epoch_deadline is gone"
    assert hasattr(_ffi, "wasm_byte_vec_t") and callable(_ffi.wasm_byte_vec_new), "wasm_byte_vec changed"
    assert callable(getattr(wasmtime.Caller, "_context", None)), "Caller._context is gone"
    assert callable(getattr(wasmtime.Caller, "_invalidate", None)), "Caller._invalidate is gone"
    assert callable(_bindings.wasmtime_linker_define_func_unchecked), "define_func_unchecked is gone"
    assert ctypes.sizeof(_bindings.wasmtime_val_raw_t) == _SLOT, "wasmtime_val_raw_t changed size"
    assert hasattr(_bindings, "wasmtime_caller_t"), "wasmtime_caller_t is gone"
    assert hasattr(_func, "LAST_EXCEPTION"), "wasmtime-py's parked exception is gone"
    assert callable(getattr(wasmtime.Trap, "_consume", None)), "Trap._consume is gone"
