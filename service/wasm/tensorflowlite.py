"""Module `wasmedge_tensorflowlite`: WasmEdge's TensorFlow-Lite host functions, both ABIs.

Both are defined in the one module namespace: their names do not collide, and a guest
imports one set or the other (../shared/docs/wasm-abi.md §3.2, §3.6).

Legacy ABI (the WasmEdge-tensorflow extension; crate `wasmedge_tensorflow_interface` 0.2):

    wasmedge_tensorflowlite_create_session(model_ptr, model_len) -> i64 session (0: failed)
    wasmedge_tensorflowlite_append_input(i64 session, name_ptr, name_len, data_ptr, data_len)
    wasmedge_tensorflowlite_run_session(i64 session) -> i32 (0 ok, 1 failed)
    wasmedge_tensorflowlite_get_output_tensor(i64 session, name_ptr, name_len) -> i64 tensor (0: none)
    wasmedge_tensorflowlite_get_tensor_len(i64 tensor) -> i32 bytes
    wasmedge_tensorflowlite_get_tensor_data(i64 tensor, buf_ptr)
    wasmedge_tensorflowlite_delete_session(i64 session)

  Tensors are found by exact name. As in WasmEdge, an unknown input name or a data length
  that is not the tensor's byte size makes append_input do nothing, and handle 0 is
  harmless where WasmEdge checks for it (get_tensor_len: 0, get_tensor_data and
  delete_session: nothing). Where WasmEdge would dereference a bad handle or write
  outside memory (it has no checks there) the guest traps instead: a handle this run
  did not issue, or one already deleted; a name or data range, or get_tensor_data's
  output (which has no length: the tensor's byte size is checked against memory size),
  outside guest memory.

Plugin ABI (WasmEdge >= 0.13's plugin; crate 0.3): unprefixed names, all i32, each
returning an errno; ids are written through pointers:

    create_session(model_ptr, model_len, session_out) / delete_session(session)
    append_input(session, name_ptr, name_len, data_ptr, data_len) / run_session(session)
    get_output_tensor(session, name_ptr, name_len, tensor_out)
    get_tensor_len(session, tensor, len_out)
    get_tensor_data(session, tensor, buf_ptr, buf_len, written_out)

  Errnos and their order follow the plugin: 1 for an unknown session or tensor name and a
  wrong byte size, 3 for a range outside guest memory, 4 when the interpreter fails.
  WasmEdge leaves 0 at written_out; here it gets the bytes written.

Sessions are execution contexts of the current run (graphs from the shared cache,
interpreters from the per-thread pools) in this module's own per-run context
(`TfliteContext`): no handle reaches another request's session, and all are released
when the run ends.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import wasmtime

from ..inference.backend import Encoding, ExecutionContext, backend_for
from ..inference.model import InferenceError
from . import call as guest_call
from .abi import AbiFailure, Errnos, define_errno_functions, errno_function, inference_errnos
from .handles import HandleTable
from .memory import GuestMemory, GuestMemoryError

# The plugin's errnos are wasi-nn's first six (success .. runtime_error), same numbers and names.
from .wasi_nn import Errno
from .wasmtime_capi import define_func

MODULE = "wasmedge_tensorflowlite"
LEGACY_PREFIX = "wasmedge_tensorflowlite_"


ERRNOS = Errnos(
    success=Errno.SUCCESS,
    memory=Errno.MISSING_MEMORY,
    runtime=Errno.RUNTIME_ERROR,
    inference=inference_errnos(Errno),
    missing_memory_traps=False,
)


def _shared_counter() -> Iterator[int]:
    return itertools.count(1)


@dataclass
class TfliteContext:
    """This run's sessions. The legacy ABI's i64 handles count from 1 (0 means failure),
    sessions and output tensors on one counter; the plugin ABI's u32 ids count from 0, and a
    deleted id is reused first."""

    _legacy_counter: Iterator[int] = field(default_factory=_shared_counter)
    legacy_sessions: HandleTable[ExecutionContext] = field(init=False)
    legacy_tensors: HandleTable[tuple[int, int]] = field(init=False)  # -> (session, output)
    plugin_sessions: HandleTable[ExecutionContext] = field(default_factory=lambda: HandleTable(reuse=True))

    def __post_init__(self) -> None:
        self.legacy_sessions = HandleTable(counter=self._legacy_counter)
        self.legacy_tensors = HandleTable(counter=self._legacy_counter)

    def live_contexts(self) -> int:
        return len(self.legacy_sessions) + len(self.plugin_sessions)

    def close(self) -> None:
        for context in [*self.legacy_sessions.clear(), *self.plugin_sessions.clear()]:
            context.release()
        self.legacy_tensors.clear()


def _sessions(call: guest_call.GuestCall) -> TfliteContext:
    return call.context(TfliteContext)


# -- shared by both ABIs -------------------------------------------------------------------


def _new_session(call: guest_call.GuestCall, model: np.ndarray) -> ExecutionContext:
    """An execution context for model bytes from the guest. Raises AbiFailure."""
    backend = backend_for(Encoding.TENSORFLOWLITE)
    if call.live_contexts() >= call.limits.max_contexts:
        raise AbiFailure(Errno.BUSY, f"more than {call.limits.max_contexts} sessions")
    if call.loaded_graphs >= call.limits.max_loaded_graphs or call.graph_cache is None or backend is None:
        raise AbiFailure(Errno.BUSY, "too many models loaded from bytes in one run")
    if call.past_deadline():
        raise AbiFailure(Errno.RUNTIME_ERROR, "deadline exceeded")
    try:
        graph = call.graph_cache.get_or_load(backend, [model.tobytes()])
    except ValueError as exc:
        raise AbiFailure(Errno.INVALID_ARGUMENT, str(exc)) from exc
    call.loaded_graphs += 1
    try:
        return graph.new_context()
    except InferenceError as exc:
        raise AbiFailure(Errno.BUSY, str(exc)) from exc


def _input_index(context: ExecutionContext, name: bytes) -> int | None:
    return next((i for i, t in enumerate(context.spec.inputs) if t.name.encode() == name), None)


def _output_index(context: ExecutionContext, name: bytes) -> int | None:
    return next((i for i, t in enumerate(context.spec.outputs) if t.name.encode() == name), None)


def _run(call: guest_call.GuestCall, context: ExecutionContext) -> None:
    """Invoke; raises AbiFailure."""
    if call.past_deadline():
        raise AbiFailure(Errno.RUNTIME_ERROR, "deadline exceeded")
    started = time.perf_counter()
    try:
        context.compute()
    except InferenceError as exc:
        raise AbiFailure(ERRNOS.inference[exc.kind], str(exc)) from exc
    finally:
        call.add_host_time("invoke", time.perf_counter() - started)


def _show(name: bytes) -> str:
    return name.decode("utf-8", errors="replace")


# -- legacy ABI ----------------------------------------------------------------------------


class _Trap(wasmtime.Trap):
    """Ends the guest where WasmEdge would crash or corrupt memory."""


def _legacy(function: Callable[..., int | None]) -> Callable[..., int | None]:
    """Run a legacy function for the current run; a failure of the host itself traps."""
    name = LEGACY_PREFIX + function.__name__

    @functools.wraps(function)
    def host_function(caller: wasmtime.Caller, *args: int) -> int | None:
        call = guest_call.current()
        try:
            return function(caller, call, *args)
        except wasmtime.Trap as exc:
            raise _Trap(f"{name}: {exc}") from exc
        except Exception as exc:  # a host bug: stop the guest with a clear reason
            call.note(f"{name}: {type(exc).__name__}: {exc}")
            raise _Trap(f"{name}: host error: {type(exc).__name__}: {exc}") from exc

    host_function.__name__ = name
    return host_function


def _legacy_session(call: guest_call.GuestCall, handle: int) -> ExecutionContext:
    context = _sessions(call).legacy_sessions.get(handle)
    if context is None:
        raise _Trap(f"unknown session handle {handle}")
    return context


def _legacy_tensor(call: guest_call.GuestCall, handle: int) -> tuple[ExecutionContext, int]:
    session_and_index = _sessions(call).legacy_tensors.get(handle)
    if session_and_index is None:
        raise _Trap(f"unknown tensor handle {handle}")
    session, index = session_and_index
    return _legacy_session(call, session), index


def _in_memory(memory: GuestMemory, ptr: int, length: int, what: str) -> np.ndarray:
    try:
        return memory.view(ptr, length)
    except GuestMemoryError as exc:
        raise _Trap(f"{what}: {exc}") from exc


@_legacy
def create_session(
    caller: wasmtime.Caller, call: guest_call.GuestCall, model_ptr: int, model_len: int
) -> int:
    memory = call.memory(caller)
    try:
        context = _new_session(call, memory.view(model_ptr, model_len))
    except (GuestMemoryError, AbiFailure) as exc:
        call.note(f"{LEGACY_PREFIX}create_session: {exc} (returns 0)")
        return 0
    return _sessions(call).legacy_sessions.insert(context)


@_legacy
def append_input(
    caller: wasmtime.Caller,
    call: guest_call.GuestCall,
    session: int,
    name_ptr: int,
    name_len: int,
    data_ptr: int,
    data_len: int,
) -> None:
    context = _legacy_session(call, session)
    memory = call.memory(caller)
    name = _in_memory(memory, name_ptr, name_len, "input name").tobytes()
    data = _in_memory(memory, data_ptr, data_len, "input data")
    index = _input_index(context, name)
    if index is None:
        call.note(f"{LEGACY_PREFIX}append_input: no input tensor named {_show(name)!r} (ignored)")
        return None
    if data.size != context.spec.inputs[index].nbytes:
        call.note(
            f"{LEGACY_PREFIX}append_input: input {_show(name)!r} takes "
            f"{context.spec.inputs[index].nbytes} bytes, got {data.size} (ignored)"
        )
        return None
    try:
        context.set_input(index, data)
    except InferenceError as exc:
        call.note(f"{LEGACY_PREFIX}append_input: {exc} (ignored)")
    return None


@_legacy
def run_session(caller: wasmtime.Caller, call: guest_call.GuestCall, session: int) -> int:
    context = _legacy_session(call, session)
    try:
        _run(call, context)
    except AbiFailure as exc:
        call.note(f"{LEGACY_PREFIX}run_session: {exc} (returns 1)")
        return 1
    return 0


@_legacy
def get_output_tensor(
    caller: wasmtime.Caller, call: guest_call.GuestCall, session: int, name_ptr: int, name_len: int
) -> int:
    context = _legacy_session(call, session)
    memory = call.memory(caller)
    name = _in_memory(memory, name_ptr, name_len, "output name").tobytes()
    index = _output_index(context, name)
    if index is None:
        call.note(f"{LEGACY_PREFIX}get_output_tensor: no output tensor named {_show(name)!r} (returns 0)")
        return 0
    tensors = _sessions(call).legacy_tensors
    for handle, known in tensors.items():
        if known == (session, index):
            return handle  # WasmEdge returns the same tensor pointer every time
    return tensors.insert((session, index))


@_legacy
def get_tensor_len(caller: wasmtime.Caller, call: guest_call.GuestCall, tensor: int) -> int:
    if tensor == 0:
        return 0
    context, index = _legacy_tensor(call, tensor)
    return context.spec.outputs[index].nbytes


@_legacy
def get_tensor_data(caller: wasmtime.Caller, call: guest_call.GuestCall, tensor: int, buf_ptr: int) -> None:
    if tensor == 0:
        return None
    context, index = _legacy_tensor(call, tensor)
    data = context.output(index).reshape(-1).view(np.uint8)
    memory = call.memory(caller)
    out = _in_memory(memory, buf_ptr, data.size, f"tensor data ({data.size} bytes)")
    out[:] = data
    return None


@_legacy
def delete_session(caller: wasmtime.Caller, call: guest_call.GuestCall, session: int) -> None:
    if session == 0:
        return None
    context = _legacy_session(call, session)
    context.release()
    sessions = _sessions(call)
    sessions.legacy_sessions.remove(session)
    for handle, (owner, _output) in sessions.legacy_tensors.items():
        if owner == session:
            sessions.legacy_tensors.remove(handle)
    return None


# -- plugin ABI ----------------------------------------------------------------------------


_plugin = errno_function(MODULE, ERRNOS)


def _plugin_session(call: guest_call.GuestCall, session: int) -> ExecutionContext:
    context = _sessions(call).plugin_sessions.get(session)
    if context is None:
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"unknown session {session}")
    return context


@_plugin
def plugin_create_session(
    memory: GuestMemory, call: guest_call.GuestCall, model_ptr: int, model_len: int, session_out: int
) -> None:
    model = memory.view(model_ptr, model_len)
    memory.view(session_out, 4)
    context = _new_session(call, model)
    memory.write_u32(session_out, _sessions(call).plugin_sessions.insert(context))


@_plugin
def plugin_delete_session(memory: GuestMemory, call: guest_call.GuestCall, session: int) -> None:
    # Always success, as WasmEdge: deleting an unknown session does nothing.
    context = _sessions(call).plugin_sessions.remove(session)
    if context is not None:
        context.release()


@_plugin
def plugin_run_session(memory: GuestMemory, call: guest_call.GuestCall, session: int) -> None:
    _run(call, _plugin_session(call, session))


@_plugin
def plugin_append_input(
    memory: GuestMemory,
    call: guest_call.GuestCall,
    session: int,
    name_ptr: int,
    name_len: int,
    data_ptr: int,
    data_len: int,
) -> None:
    context = _plugin_session(call, session)
    data = memory.view(data_ptr, data_len)
    name = memory.read_bytes(name_ptr, name_len)
    index = _input_index(context, name)
    if index is None:
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"no input tensor named {_show(name)!r}")
    if data_len != context.spec.inputs[index].nbytes:
        raise AbiFailure(
            Errno.INVALID_ARGUMENT,
            f"input {_show(name)!r} takes {context.spec.inputs[index].nbytes} bytes, got {data_len}",
        )
    context.set_input(index, data)


@_plugin
def plugin_get_output_tensor(
    memory: GuestMemory,
    call: guest_call.GuestCall,
    session: int,
    name_ptr: int,
    name_len: int,
    tensor_out: int,
) -> None:
    context = _plugin_session(call, session)
    name = memory.read_bytes(name_ptr, name_len)
    memory.view(tensor_out, 4)
    index = _output_index(context, name)
    if index is None:
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"no output tensor named {_show(name)!r}")
    memory.write_u32(tensor_out, index)  # the output's position, as WasmEdge


def _plugin_output(context: ExecutionContext, tensor: int) -> int:
    if tensor >= len(context.spec.outputs):
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"unknown tensor {tensor}")
    return tensor


@_plugin
def plugin_get_tensor_len(
    memory: GuestMemory, call: guest_call.GuestCall, session: int, tensor: int, len_out: int
) -> None:
    context = _plugin_session(call, session)
    memory.view(len_out, 4)
    memory.write_u32(len_out, context.spec.outputs[_plugin_output(context, tensor)].nbytes)


@_plugin
def plugin_get_tensor_data(
    memory: GuestMemory,
    call: guest_call.GuestCall,
    session: int,
    tensor: int,
    buf_ptr: int,
    buf_len: int,
    written_out: int,
) -> None:
    context = _plugin_session(call, session)
    out = memory.view(buf_ptr, buf_len)
    memory.view(written_out, 4)
    index = _plugin_output(context, tensor)
    memory.write_u32(written_out, 0)
    data = context.output(index).reshape(-1).view(np.uint8)
    if data.size != buf_len:  # WasmEdge wants the exact size, not just enough room
        raise AbiFailure(
            Errno.INVALID_ARGUMENT, f"output {tensor} has {data.size} bytes, the buffer {buf_len}"
        )
    out[:] = data
    memory.write_u32(written_out, data.size)


# -- definitions ---------------------------------------------------------------------------

_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()

# name: (host function, parameter types, result types). FuncTypes are made per Linker
# (per Engine) in define().
LEGACY_FUNCTIONS: dict[
    str, tuple[Callable[..., int | None], list[wasmtime.ValType], list[wasmtime.ValType]]
] = {
    f"{LEGACY_PREFIX}create_session": (create_session, [_I32, _I32], [_I64]),
    f"{LEGACY_PREFIX}append_input": (append_input, [_I64] + [_I32] * 4, []),
    f"{LEGACY_PREFIX}run_session": (run_session, [_I64], [_I32]),
    f"{LEGACY_PREFIX}get_output_tensor": (get_output_tensor, [_I64, _I32, _I32], [_I64]),
    f"{LEGACY_PREFIX}get_tensor_len": (get_tensor_len, [_I64], [_I32]),
    f"{LEGACY_PREFIX}get_tensor_data": (get_tensor_data, [_I64, _I32], []),
    f"{LEGACY_PREFIX}delete_session": (delete_session, [_I64], []),
}

PLUGIN_FUNCTIONS = (
    plugin_create_session,
    plugin_delete_session,
    plugin_run_session,
    plugin_append_input,
    plugin_get_output_tensor,
    plugin_get_tensor_len,
    plugin_get_tensor_data,
)


def define(linker: wasmtime.Linker) -> None:
    for name, (function, params, results) in LEGACY_FUNCTIONS.items():
        func_type = wasmtime.FuncType(params, results)
        define_func(linker, MODULE, name, func_type, function, access_caller=True, unsigned=True)
    define_errno_functions(linker, MODULE, PLUGIN_FUNCTIONS)
