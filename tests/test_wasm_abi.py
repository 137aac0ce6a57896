"""The errno wrapper every host ABI shares (service/wasm/abi.py), defined in the test and called by a
real wasm guest through a real wasmtime linker: each failure becomes the ABI's errno and a note, never
an exception across the wasm boundary (a guest without memory traps where the ABI says so).

tests/test_wasi_nn.py and tests/test_legacy_abis.py check the same through the real ABIs, whose host
functions are defined when their modules are imported; these define them at test time, so mutation
testing (tools/mutation.py) sees the wrapper's own code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

import numpy as np
import pytest
import wasmtime

from service.imaging import ImageError
from service.inference.model import InferenceError, InferenceErrorKind
from service.wasm import call as guest_call
from service.wasm.abi import (
    AbiFailure,
    Errnos,
    define_errno_functions,
    errno_function,
    inference_errnos,
    timed_decode,
)
from service.wasm.memory import GuestMemory


class Errno(IntEnum):
    SUCCESS = 0
    INVALID_ARGUMENT = 1
    BUSY = 2
    RUNTIME_ERROR = 3
    OUT_OF_BOUNDS = 4
    REFUSED = 5


def errnos(*, missing_memory_traps: bool) -> Errnos:
    return Errnos(
        success=Errno.SUCCESS,
        memory=Errno.OUT_OF_BOUNDS,
        runtime=Errno.RUNTIME_ERROR,
        inference=inference_errnos(Errno),
        missing_memory_traps=missing_memory_traps,
    )


# The guest calls host.<name>(a, b, c) and returns its errno; `memory` is one page, or none.
GUEST = """
(module
  (import "host" "{name}" (func $f (param i32 i32 i32) (result i32)))
  {memory}
  (func (export "run") (param i32 i32 i32) (result i32)
    (call $f (local.get 0) (local.get 1) (local.get 2))))
"""
MEMORY = '(memory (export "memory") 1)'


def run_guest(
    host_function: Callable[..., int], name: str, args: tuple[int, int, int], *, memory: bool = True
) -> tuple[int, guest_call.GuestCall]:
    """Link `host_function` as host.<name>, run the guest with `args`: its errno and the run's call."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    define_errno_functions(linker, "host", [host_function])
    module = wasmtime.Module(engine, GUEST.format(name=name, memory=MEMORY if memory else ""))
    instance = linker.instantiate(store, module)
    with guest_call.running(guest_call.GuestCall()) as call:
        errno = instance.exports(store)["run"](store, *args)
    assert isinstance(errno, int)
    return errno, call


def test_a_host_function_gets_its_arguments_as_u32_and_returns_success() -> None:
    seen: list[tuple[int, ...]] = []

    @errno_function("test-abi", errnos(missing_memory_traps=True))
    def plugin_take(memory: GuestMemory, call: guest_call.GuestCall, a: int, b: int, c: int) -> None:
        seen.append((a, b, c))
        assert call is guest_call.current() and memory.size == 65_536

    assert plugin_take.__name__ == "take"  # the import's name: without `plugin_`
    assert plugin_take.arity == 3  # type: ignore[attr-defined]
    errno, call = run_guest(plugin_take, "take", (-1, 7, -2147483648))
    assert errno == Errno.SUCCESS and seen == [(0xFFFFFFFF, 7, 0x80000000)] and call.notes == []


def test_an_abi_failure_is_its_errno_and_a_note_naming_the_function() -> None:
    @errno_function("test-abi", errnos(missing_memory_traps=True))
    def refuse(memory: GuestMemory, call: guest_call.GuestCall, a: int, b: int, c: int) -> None:
        raise AbiFailure(Errno.REFUSED, f"no thanks for {a}")

    errno, call = run_guest(refuse, "refuse", (3, 0, 0))
    assert errno == Errno.REFUSED
    assert call.notes == ["test-abi refuse: no thanks for 3 (errno 5 refused)"]


def test_a_name_given_to_the_decorator_is_the_import_and_the_note_without_a_label() -> None:
    @errno_function("", errnos(missing_memory_traps=True), name="renamed")
    def plugin_original(memory: GuestMemory, call: guest_call.GuestCall, a: int, b: int, c: int) -> None:
        raise AbiFailure(Errno.REFUSED, "refused")

    assert plugin_original.__name__ == "renamed"
    errno, call = run_guest(plugin_original, "renamed", (0, 0, 0))
    assert errno == Errno.REFUSED and call.notes == ["renamed: refused (errno 5 refused)"]


def test_a_range_outside_guest_memory_is_the_memory_errno() -> None:
    @errno_function("test-abi", errnos(missing_memory_traps=True))
    def read(memory: GuestMemory, call: guest_call.GuestCall, ptr: int, length: int, c: int) -> None:
        memory.read_bytes(ptr, length)

    assert run_guest(read, "read", (65_535, 1, 0))[0] == Errno.SUCCESS  # the last byte
    errno, call = run_guest(read, "read", (65_535, 2, 0))
    assert errno == Errno.OUT_OF_BOUNDS
    assert call.notes == [
        "test-abi read: range 0xffff+2 is outside guest memory (65536) (errno 4 out_of_bounds)"
    ]


def test_a_guest_without_memory_traps_where_the_abi_says_so() -> None:
    @errno_function("test-abi", errnos(missing_memory_traps=True))
    def needs_memory(memory: GuestMemory, call: guest_call.GuestCall, a: int, b: int, c: int) -> None:
        raise AssertionError("not reached: there is no memory to give")

    with pytest.raises(wasmtime.Trap, match="guest exports no memory"):
        run_guest(needs_memory, "needs_memory", (0, 0, 0), memory=False)


def test_a_guest_without_memory_gets_the_memory_errno_where_the_abi_says_so() -> None:
    @errno_function("test-abi", errnos(missing_memory_traps=False))
    def needs_memory(memory: GuestMemory, call: guest_call.GuestCall, a: int, b: int, c: int) -> None:
        raise AssertionError("not reached: there is no memory to give")

    errno, call = run_guest(needs_memory, "needs_memory", (0, 0, 0), memory=False)
    assert errno == Errno.OUT_OF_BOUNDS
    assert call.notes == ["test-abi needs_memory: guest exports no memory (errno 4 out_of_bounds)"]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (InferenceErrorKind.INVALID_ARGUMENT, Errno.INVALID_ARGUMENT),
        (InferenceErrorKind.BUSY, Errno.BUSY),
        (InferenceErrorKind.RUNTIME, Errno.RUNTIME_ERROR),
    ],
)
def test_an_inference_failure_is_the_errno_of_its_kind(kind: InferenceErrorKind, expected: Errno) -> None:
    @errno_function("test-abi", errnos(missing_memory_traps=True))
    def infer(memory: GuestMemory, call: guest_call.GuestCall, a: int, b: int, c: int) -> None:
        raise InferenceError(kind, "the interpreter said no")

    errno, call = run_guest(infer, "infer", (0, 0, 0))
    assert errno == expected
    note = f"test-abi infer: the interpreter said no (errno {expected.value} {expected.name.lower()})"
    assert call.notes == [note]


def test_a_host_bug_is_the_runtime_errno_with_its_exception_type_never_a_trap() -> None:
    @errno_function("test-abi", errnos(missing_memory_traps=True))
    def buggy(memory: GuestMemory, call: guest_call.GuestCall, a: int, b: int, c: int) -> None:
        {}["missing"]

    errno, call = run_guest(buggy, "buggy", (0, 0, 0))
    assert errno == Errno.RUNTIME_ERROR
    assert call.notes == ["test-abi buggy: KeyError: 'missing' (errno 3 runtime_error)"]


def test_the_import_type_has_one_i32_per_argument() -> None:
    @errno_function("test-abi", errnos(missing_memory_traps=True))
    def two(memory: GuestMemory, call: guest_call.GuestCall, a: int, b: int) -> None:
        pass

    assert two.arity == 2  # type: ignore[attr-defined]
    with pytest.raises(wasmtime.WasmtimeError, match="incompatible import type"):
        run_guest(two, "two", (0, 0, 0))  # the guest imports three


def test_timed_decode_returns_the_pixels_and_counts_its_time() -> None:
    call = guest_call.GuestCall()
    pixels = np.zeros((2, 2, 3), np.uint8)

    def decode() -> np.ndarray:
        time.sleep(0.01)  # the decode's own time, which must be counted
        return pixels

    before = time.perf_counter()
    assert timed_decode(call, Errno.REFUSED, decode) is pixels
    first = call.host_seconds["decode"]
    assert 0.01 <= first <= time.perf_counter() - before  # the decode's time, within the call's
    timed_decode(call, Errno.REFUSED, decode)
    assert first + 0.01 <= call.host_seconds["decode"] <= time.perf_counter() - before  # added up


def test_timed_decode_turns_an_image_error_into_the_abis_errno() -> None:
    call = guest_call.GuestCall()

    def decode() -> np.ndarray:
        raise ImageError("not a recognised image format")

    with pytest.raises(AbiFailure, match=r"^not a recognised image format$") as failed:
        timed_decode(call, Errno.REFUSED, decode)
    assert failed.value.errno == Errno.REFUSED and "decode" in call.host_seconds


def test_timed_decode_refuses_past_the_deadline_without_decoding() -> None:
    call = guest_call.GuestCall(deadline=time.monotonic() - 1)

    def decode() -> np.ndarray:
        raise AssertionError("decoded past the deadline")

    with pytest.raises(AbiFailure, match=r"^deadline exceeded$") as failed:
        timed_decode(call, Errno.REFUSED, decode)
    assert failed.value.errno == Errno.REFUSED and call.deadline_hit and "decode" not in call.host_seconds


def test_a_host_function_called_outside_a_guest_run_traps_saying_so() -> None:
    @errno_function("test-abi", errnos(missing_memory_traps=False))
    def anything(memory: GuestMemory, call: guest_call.GuestCall, a: int, b: int, c: int) -> None:
        raise AssertionError("not reached: there is no run")

    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    define_errno_functions(linker, "host", [anything])
    instance = linker.instantiate(
        store, wasmtime.Module(engine, GUEST.format(name="anything", memory=MEMORY))
    )
    with pytest.raises(RuntimeError, match=r"^host function called outside a guest run$"):
        instance.exports(store)["run"](store, 0, 0, 0)
