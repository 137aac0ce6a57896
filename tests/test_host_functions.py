"""Host functions defined through wasmtime's unchecked callback (wasmtime_capi.define_func):
values both ways, exceptions as traps, callers, and the table of definitions freed with them."""

from __future__ import annotations

import gc

import pytest
import wasmtime

from service.wasm import wasmtime_capi

I32, I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()

GUEST = """
(module
  (import "host" "add" (func $add (param i32 i64) (result i64)))
  (import "host" "negate" (func $negate (param i32) (result i32)))
  (import "host" "fail" (func $fail (param i32)))
  (import "host" "memory_size" (func $memory_size (result i32)))
  (memory (export "memory") 2)
  (func (export "add") (param i32 i64) (result i64) (call $add (local.get 0) (local.get 1)))
  (func (export "negate") (param i32) (result i32) (call $negate (local.get 0)))
  (func (export "fail") (param i32) (call $fail (local.get 0)))
  (func (export "memory_size") (result i32) (call $memory_size)))
"""


class HostBug(Exception):
    pass


def fail(code: int) -> None:
    if code == 1:
        raise HostBug("the host function failed")
    if code == 2:
        raise wasmtime.Trap("a trap raised by the host")


def memory_size(caller: wasmtime.Caller) -> int:
    memory = caller.get("memory")
    assert isinstance(memory, wasmtime.Memory)
    return memory.data_len(caller)


def linked(engine: wasmtime.Engine) -> wasmtime.Linker:
    linker = wasmtime.Linker(engine)
    define = wasmtime_capi.define_func
    define(linker, "host", "add", wasmtime.FuncType([I32, I64], [I64]), lambda a, b: a + b)
    define(linker, "host", "negate", wasmtime.FuncType([I32], [I32]), lambda a: -a)
    define(linker, "host", "fail", wasmtime.FuncType([I32], []), fail)
    define(linker, "host", "memory_size", wasmtime.FuncType([], [I32]), memory_size, access_caller=True)
    return linker


@pytest.fixture
def guest() -> tuple[wasmtime.Store, wasmtime.Instance]:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = linked(engine).instantiate(store, wasmtime.Module(engine, GUEST))
    return store, instance


def export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> wasmtime.Func:
    func = instance.exports(store)[name]
    assert isinstance(func, wasmtime.Func)
    return func


def test_i32_and_i64_values_pass_both_ways_signed(guest: tuple[wasmtime.Store, wasmtime.Instance]) -> None:
    store, instance = guest
    assert export(store, instance, "add")(store, -5, 1 << 40) == (1 << 40) - 5
    assert export(store, instance, "negate")(store, 7) == -7
    assert export(store, instance, "negate")(store, -(1 << 31)) == -(1 << 31)  # wraps, as in wasm


def test_a_host_exception_reaches_the_caller_of_the_guest_as_itself(
    guest: tuple[wasmtime.Store, wasmtime.Instance],
) -> None:
    store, instance = guest
    with pytest.raises(HostBug, match="the host function failed"):
        export(store, instance, "fail")(store, 1)
    with pytest.raises(wasmtime.Trap, match="a trap raised by the host"):
        export(store, instance, "fail")(store, 2)
    export(store, instance, "fail")(store, 0)  # and the next call is clean
    assert export(store, instance, "negate")(store, 3) == -3


def test_a_caller_sees_the_calling_instance(guest: tuple[wasmtime.Store, wasmtime.Instance]) -> None:
    store, instance = guest
    assert export(store, instance, "memory_size")(store) == 2 * 65536


def test_a_result_from_a_function_without_results_is_an_error() -> None:
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    wasmtime_capi.define_func(linker, "host", "fail", wasmtime.FuncType([I32], []), lambda code: 5)
    module = wasmtime.Module(engine, '(module (import "host" "fail" (func $f (param i32))) '
                             '(func (export "go") (call $f (i32.const 0))))')  # fmt: skip
    store = wasmtime.Store(engine)
    go = linker.instantiate(store, module).exports(store)["go"]
    assert isinstance(go, wasmtime.Func)
    with pytest.raises(wasmtime.WasmtimeError, match="produced results"):
        go(store)


def test_only_integer_types_are_accepted() -> None:
    linker = wasmtime.Linker(wasmtime.Engine())
    with pytest.raises(ValueError, match="i32 and i64 only"):
        wasmtime_capi.define_func(linker, "host", "f", wasmtime.FuncType([wasmtime.ValType.f32()], []), print)


def test_definitions_are_freed_with_the_last_linker_and_instance_holding_them() -> None:
    gc.collect()  # what earlier tests left behind
    before = len(wasmtime_capi._host_funcs)
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = linked(engine).instantiate(store, wasmtime.Module(engine, GUEST))
    gc.collect()
    assert len(wasmtime_capi._host_funcs) == before + 4  # the Linker is gone, the Store holds them
    assert export(store, instance, "negate")(store, 1) == -1
    del instance, store
    gc.collect()
    assert len(wasmtime_capi._host_funcs) == before
