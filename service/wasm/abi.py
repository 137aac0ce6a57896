"""What every errno-returning host ABI shares: the wrapper that runs one host function for the
current guest run and turns every failure into the ABI's errno, never an exception across the
wasm boundary (wasmtime-py passes those through a global), with a note saying why."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

import wasmtime

from ..imaging import ImageError
from ..inference.model import InferenceError, InferenceErrorKind
from . import call as guest_call
from .memory import GuestMemoryError, MissingMemory
from .wasmtime_capi import define_func

T = TypeVar("T")


class AbiFailure(Exception):
    """A host function's refusal, with the errno the guest gets."""

    def __init__(self, errno: IntEnum, message: str) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class Errnos:
    """How one ABI numbers its outcomes."""

    success: IntEnum
    memory: IntEnum  # a pointer or length outside guest memory
    runtime: IntEnum  # a failure of the host itself
    inference: Mapping[InferenceErrorKind, IntEnum]
    missing_memory_traps: bool  # a guest without a memory export: trap, or the `memory` errno


HostFunction = Callable[..., None]


def inference_errnos(errno: type[IntEnum]) -> dict[InferenceErrorKind, IntEnum]:
    """WasmEdge's NN ABIs number inference failures alike: invalid_argument, busy, runtime_error."""
    return {
        InferenceErrorKind.INVALID_ARGUMENT: errno["INVALID_ARGUMENT"],
        InferenceErrorKind.BUSY: errno["BUSY"],
        InferenceErrorKind.RUNTIME: errno["RUNTIME_ERROR"],
    }


def timed_decode(call: guest_call.GuestCall, failure: IntEnum, decode: Callable[[], T]) -> T:
    """Host-side image decoding for a guest: refused past the deadline, its time counted as
    `decode`, an ImageError turned into the ABI's `failure` errno."""
    if call.past_deadline():
        raise AbiFailure(failure, "deadline exceeded")
    started = time.perf_counter()
    try:
        return decode()
    except ImageError as exc:
        raise AbiFailure(failure, str(exc)) from exc
    finally:
        call.add_host_time("decode", time.perf_counter() - started)


def errno_function(
    label: str, errnos: Errnos, name: str | None = None
) -> Callable[[HostFunction], Callable[..., int]]:
    """Decorate `f(memory, call, *u32 args)`; the wasm import returns its errno as an i32.
    Notes name the function `label name` (name: the function's own, without `plugin_`)."""

    def decorate(function: HostFunction) -> Callable[..., int]:
        function_name = name or function.__name__.removeprefix("plugin_")
        note_name = f"{label} {function_name}" if label else function_name

        @functools.wraps(function)
        def host_function(caller: wasmtime.Caller, *args: int) -> int:
            call = guest_call.current()
            try:
                memory = call.memory(caller)
                function(memory, call, *args)  # every value in these ABIs is a u32
                return errnos.success
            except AbiFailure as exc:
                errno, message = exc.errno, str(exc)
            except MissingMemory as exc:
                if errnos.missing_memory_traps:
                    raise
                errno, message = errnos.memory, str(exc)
            except GuestMemoryError as exc:
                errno, message = errnos.memory, str(exc)
            except InferenceError as exc:
                errno, message = errnos.inference[exc.kind], str(exc)
            except Exception as exc:  # a host bug must not become a trap with a stray exception
                errno, message = errnos.runtime, f"{type(exc).__name__}: {exc}"
            call.note(f"{note_name}: {message} (errno {errno.value} {errno.name.lower()})")
            return errno

        host_function.__name__ = function_name
        # The wasm import's i32 parameters: all of f's but memory and call.
        host_function.arity = len(inspect.signature(function).parameters) - 2  # type: ignore[attr-defined]
        return host_function

    return decorate


I32 = wasmtime.ValType.i32()


def define_errno_functions(
    linker: wasmtime.Linker, module: str, functions: Iterable[Callable[..., int]]
) -> None:
    """Define each `errno_function` under its name: i32 parameters, an i32 errno."""
    for function in functions:
        func_type = wasmtime.FuncType([I32] * function.arity, [I32])  # type: ignore[attr-defined]
        define_func(linker, module, function.__name__, func_type, function, access_caller=True, unsigned=True)


# The WASI preview1 functions the host replaces (wasi_poll, wasi_output), and the errnos they return.
WASI_MODULE = "wasi_snapshot_preview1"


class WasiErrno(IntEnum):
    SUCCESS = 0
    FAULT = 21
    INVAL = 28
    NOSPC = 51


def replace_wasi_function(
    linker: wasmtime.Linker, name: str, params: int, function: Callable[..., int]
) -> None:
    """Define `function` (caller, then `params` u32s -> an i32 errno) in place of WASI preview1's
    `name` on a Linker that already holds WASI (`define_wasi`)."""
    linker.allow_shadowing = True
    try:
        signature = wasmtime.FuncType([I32] * params, [I32])
        define_func(linker, WASI_MODULE, name, signature, function, access_caller=True, unsigned=True)
    finally:
        linker.allow_shadowing = False
