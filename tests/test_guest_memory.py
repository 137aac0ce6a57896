"""Exact bounds of guest memory access: the last byte is reachable, one byte past it is not.

Every host ABI reads and writes guest memory through `service.wasm.memory.GuestMemory`; an
off-by-one there lets a guest read or write one byte of host memory. These tests call it from a
real host function of a real wasmtime instance with a one-page (65,536-byte) memory, at the
boundary itself, not several bytes beyond it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import wasmtime

from service.wasm.call import GuestCall
from service.wasm.host import engine_config
from service.wasm.memory import GuestMemory, GuestMemoryError, MissingMemory

PAGE = 65_536

# `check(ptr, len)` asks the host to take a view of [ptr, ptr+len); `store(ptr)` writes 0xAB there first,
# through wasm, so a view can be compared with what the guest itself wrote.
MODULE = """
(module
  (import "host" "check" (func $check (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "check") (param i32 i32) (result i32) (call $check (local.get 0) (local.get 1)))
  (func (export "store") (param i32) (i32.store8 (local.get 0) (i32.const 0xAB)))
  (func (export "grow") (drop (memory.grow (i32.const 1)))))
"""
NO_MEMORY = """
(module
  (import "host" "check" (func $check (param i32 i32) (result i32)))
  (func (export "check") (param i32 i32) (result i32) (call $check (local.get 0) (local.get 1))))
"""

HostAction = Callable[[GuestMemory, int, int], None]


def call_host(
    action: HostAction, ptr: int, length: int, wat: str = MODULE, stored_at: int | None = None
) -> int:
    """Run `action(memory, ptr, length)` inside a host call: 0 if it succeeded, 1 on GuestMemoryError."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    call = GuestCall()

    def check(caller: wasmtime.Caller, ptr: int, length: int) -> int:
        try:
            action(call.memory(caller), ptr & 0xFFFFFFFF, length & 0xFFFFFFFF)
        except GuestMemoryError:
            return 1
        return 0

    check_type = wasmtime.FuncType([wasmtime.ValType.i32(), wasmtime.ValType.i32()], [wasmtime.ValType.i32()])
    host = wasmtime.Func(store, check_type, check, access_caller=True)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, wat), [host])
    if stored_at is not None:
        instance.exports(store)["store"](store, stored_at)
    result = instance.exports(store)["check"](store, ptr, length)
    assert isinstance(result, int)
    return result


def view(memory: GuestMemory, ptr: int, length: int) -> None:
    assert memory.view(ptr, length).size == length


@pytest.mark.parametrize(
    ("ptr", "length", "outside"),
    [
        (0, PAGE, 0),  # all of it
        (PAGE - 1, 1, 0),  # the last byte
        (PAGE, 0, 0),  # an empty range at the very end
        (0, PAGE + 1, 1),  # one byte more than all of it
        (PAGE - 1, 2, 1),  # the last byte and one past it
        (PAGE, 1, 1),  # the first byte past the end
        (PAGE + 1, 0, 1),  # an empty range starting past the end
        (0xFFFFFFFF, 2, 1),  # ptr + len wraps a u32: must not wrap to a small address
    ],
)
def test_a_view_reaches_the_last_byte_and_not_one_past_it(ptr: int, length: int, outside: int) -> None:
    assert call_host(view, ptr, length) == outside


def test_a_view_is_the_guests_own_bytes() -> None:
    seen: list[int] = []

    def read(memory: GuestMemory, ptr: int, length: int) -> None:
        seen.extend(memory.view(ptr, length))

    call_host(read, PAGE - 1, 1, stored_at=PAGE - 1)
    assert seen == [0xAB]


@pytest.mark.parametrize(("ptr", "outside"), [(PAGE - 4, 0), (PAGE - 3, 1)])
def test_u32_reads_and_writes_end_at_the_last_byte(ptr: int, outside: int) -> None:
    def read_write(memory: GuestMemory, ptr: int, _length: int) -> None:
        memory.write_u32(ptr, 0xDEADBEEF)
        assert memory.read_u32s(ptr, 1) == (0xDEADBEEF,)

    assert call_host(read_write, ptr, 0) == outside


@pytest.mark.parametrize(("count", "outside"), [(PAGE // 4, 0), (PAGE // 4 + 1, 1)])
def test_u32_arrays_are_bounded_by_their_whole_length(count: int, outside: int) -> None:
    assert call_host(lambda memory, ptr, n: memory.read_u32s(ptr, n), 0, count) == outside


@pytest.mark.parametrize(("length", "outside"), [(PAGE, 0), (PAGE + 1, 1)])
def test_writes_are_bounded_by_their_whole_length(length: int, outside: int) -> None:
    assert call_host(lambda memory, ptr, n: memory.write(ptr, bytes(n)), 0, length) == outside


def test_a_guest_without_memory_traps() -> None:
    with pytest.raises(wasmtime.Trap) as trap:
        call_host(view, 0, 0, wat=NO_MEMORY)
    assert str(trap.value).startswith("guest exports no memory")
    assert MissingMemory.__mro__[1] is wasmtime.Trap


def test_negative_host_computed_ranges_are_outside() -> None:
    """Guest pointers are u32, but a host module may compute an offset: a negative one never wraps."""

    def negative(memory: GuestMemory, _ptr: int, _length: int) -> None:
        for ptr, length in ((-1, 1), (0, -1), (-4, 4)):
            with pytest.raises(GuestMemoryError):
                memory.view(ptr, length)

    assert call_host(negative, 0, 0) == 0


def test_the_error_names_the_range_and_the_memory_size() -> None:
    messages: list[str] = []

    def outside(memory: GuestMemory, ptr: int, length: int) -> None:
        try:
            memory.view(ptr, length)
        except GuestMemoryError as error:
            messages.append(str(error))

    call_host(outside, PAGE, 1)
    assert messages == ["range 0x10000+1 is outside guest memory (65536)"]


def test_read_bytes_copies_exactly_the_range() -> None:
    copied: list[bytes] = []
    call_host(
        lambda memory, ptr, length: copied.append(memory.read_bytes(ptr, length)),
        PAGE - 2,
        2,
        stored_at=PAGE - 2,
    )
    assert copied == [b"\xab\x00"]
    assert call_host(lambda memory, ptr, length: memory.read_bytes(ptr, length), PAGE - 1, 2) == 1


def test_arrays_are_written_as_their_bytes_in_order() -> None:
    """Host modules write tensors (any dtype, any shape) as they are laid out in memory."""
    tensor = np.arange(6, dtype="<f4").reshape(2, 3)
    written: list[bytes] = []

    def write(memory: GuestMemory, ptr: int, _length: int) -> None:
        memory.write(ptr, tensor)
        written.append(memory.read_bytes(ptr, tensor.nbytes))

    call_host(write, PAGE - tensor.nbytes, 0)
    assert written == [tensor.tobytes()]


def test_memory_the_guest_grew_since_an_earlier_host_call_is_reachable() -> None:
    """A run maps its memory once: a later host call still reaches the pages grown since, and
    the first call's view still holds the guest's bytes (the memory stayed in place)."""
    engine = wasmtime.Engine(engine_config())
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1)  # the host's settings include epoch interruption
    call = GuestCall()
    views: list[np.ndarray] = []

    def check(caller: wasmtime.Caller, ptr: int, length: int) -> int:
        try:
            views.append(call.memory(caller).view(ptr, length))
        except GuestMemoryError:
            return 1
        return 0

    check_type = wasmtime.FuncType([wasmtime.ValType.i32(), wasmtime.ValType.i32()], [wasmtime.ValType.i32()])
    host = wasmtime.Func(store, check_type, check, access_caller=True)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, MODULE), [host]).exports(store)
    assert exports["check"](store, 0, PAGE) == 0
    assert exports["check"](store, PAGE, 1) == 1
    exports["grow"](store)
    exports["store"](store, 7)
    exports["store"](store, 2 * PAGE - 1)
    assert exports["check"](store, PAGE, PAGE) == 0
    assert exports["check"](store, 2 * PAGE, 1) == 1
    assert views[0][7] == 0xAB and views[1][PAGE - 1] == 0xAB
