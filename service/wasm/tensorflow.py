"""Module `wasmedge_tensorflow`: WasmEdge's TensorFlow host functions, defined so that guests
importing them link, but failing: this host runs TensorFlow Lite models only.

Guests built with `wasmedge_tensorflow_interface` 0.2 import several of these even when
they only ever run a TFLite model (the crate picks TF or TFLite at run time), and
instantiation fails unless every import exists with its exact type; WasmEdge's TFLite-only
build registers a fake module for the same reason (../shared/docs/wasm-abi.md §3.1, §3.3).

Every call fails the way its ABI reports a failure, and the first call of each function
in a run writes one line to the guest's stderr saying why:

- legacy ABI (prefixed, i64 handles): create_session and get_output_tensor return 0 (no
  session, no tensor), run_session 1 (failed), get_tensor_len 0; the functions without a
  result do nothing.
- plugin ABI (unprefixed, crate 0.3): every function returns errno 1 (invalid_argument:
  the graph cannot be imported, so no session exists), except delete_session: 0, as
  WasmEdge returns for any session id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import wasmtime

from . import call as guest_call
from .wasmtime_capi import define_func

MODULE = "wasmedge_tensorflow"
LEGACY_PREFIX = "wasmedge_tensorflow_"
INVALID_ARGUMENT = 1

_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()

# name: (parameter types, result type or None, the failure result)
_LEGACY: dict[str, tuple[list[wasmtime.ValType], wasmtime.ValType | None, int | None]] = {
    "create_session": ([_I32, _I32], _I64, 0),
    "delete_session": ([_I64], None, None),
    "run_session": ([_I64], _I32, 1),
    "get_output_tensor": ([_I64, _I32, _I32, _I32], _I64, 0),
    "get_tensor_len": ([_I64], _I32, 0),
    "get_tensor_data": ([_I64, _I32], None, None),
    "append_input": ([_I64] + [_I32] * 8, None, None),
    "append_output": ([_I64, _I32, _I32, _I32], None, None),
    "clear_input": ([_I64], None, None),
    "clear_output": ([_I64], None, None),
}

# name: (number of i32 parameters, errno); every one returns an i32 errno
_PLUGIN: dict[str, tuple[int, int]] = {
    "create_session": (3, INVALID_ARGUMENT),
    "create_session_saved_model": (5, INVALID_ARGUMENT),
    "delete_session": (1, 0),
    "run_session": (1, INVALID_ARGUMENT),
    "get_output_tensor": (4, INVALID_ARGUMENT),
    "get_tensor_len": (3, INVALID_ARGUMENT),
    "get_tensor_data": (5, INVALID_ARGUMENT),
    "append_input": (8, INVALID_ARGUMENT),
    "append_output": (3, INVALID_ARGUMENT),
    "clear_input": (1, INVALID_ARGUMENT),
    "clear_output": (1, INVALID_ARGUMENT),
}


@dataclass
class TensorflowContext:
    """This run's record of the functions it called, each said on stderr once per run."""

    said: set[str] = field(default_factory=set)

    def live_contexts(self) -> int:
        return 0

    def close(self) -> None:
        self.said.clear()


def _unsupported(name: str, result: int | None, outcome: str) -> Callable[..., int | None]:
    message = f"{name}: this host runs TensorFlow Lite models only, not TensorFlow ({outcome})"

    def host_function(*args: int) -> int | None:
        call = guest_call.current()
        said = call.context(TensorflowContext).said
        if name not in said:
            said.add(name)
            call.tell_guest_user(message)
        return result

    host_function.__name__ = name
    return host_function


def define(linker: wasmtime.Linker) -> None:
    for name, (params, result_type, result) in _LEGACY.items():
        full_name = LEGACY_PREFIX + name
        func_type = wasmtime.FuncType(params, [result_type] if result_type is not None else [])
        outcome = "does nothing" if result is None else f"returns {result}"
        define_func(linker, MODULE, full_name, func_type, _unsupported(full_name, result, outcome))
    for name, (arity, errno) in _PLUGIN.items():
        func_type = wasmtime.FuncType([_I32] * arity, [_I32])
        function = _unsupported(f"{MODULE} {name}", errno, f"returns errno {errno}")
        define_func(linker, MODULE, name, func_type, function)
