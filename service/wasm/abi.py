"""What every errno-returning host ABI shares: the wrapper that runs one host function for the
current guest run and turns every failure into the ABI's errno, never an exception across the
wasm boundary (wasmtime-py passes those through a global), with a note saying why."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum

import wasmtime

from ..inference.model import InferenceError, InferenceErrorKind
from . import call as guest_call
from .memory import GuestMemory, GuestMemoryError, MissingMemory


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


def errno_function(label: str, errnos: Errnos) -> Callable[[HostFunction], Callable[..., int]]:
    """Decorate `f(memory, call, *u32 args)`; the wasm import returns its errno as an i32."""

    def decorate(function: HostFunction) -> Callable[..., int]:
        name = f"{label} {function.__name__.removeprefix('plugin_')}"

        @functools.wraps(function)
        def host_function(caller: wasmtime.Caller, *args: int) -> int:
            call = guest_call.current()
            try:
                memory = GuestMemory(caller)
                # wasmtime passes i32 as signed; every value in these ABIs is a u32.
                function(memory, call, *(arg & 0xFFFFFFFF for arg in args))
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
            call.note(f"{name}: {message} (errno {errno.value} {errno.name.lower()})")
            return errno

        return host_function

    return decorate


I32 = wasmtime.ValType.i32()


def define_errno_functions(
    linker: wasmtime.Linker, module: str, functions: Mapping[str, tuple[Callable[..., int], int]]
) -> None:
    """Define `name: (host function, number of i32 parameters)`, each returning an i32 errno."""
    for name, (function, arity) in functions.items():
        linker.define_func(
            module, name, wasmtime.FuncType([I32] * arity, [I32]), function, access_caller=True
        )
