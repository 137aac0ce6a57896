"""Module `wasi_ephemeral_nn`: the witx wasi-nn ABI over the LiteRT backend.

A thin layer: it reads and bounds-checks what the guest passes, applies WasmEdge's
TFLite-backend checks (in its order, with its errnos), and delegates to the graphs
and execution contexts of the current run. Every failure is an errno, never an
exception across the wasm boundary (wasmtime-py passes those through a global).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from enum import IntEnum

import numpy as np
import wasmtime

from ..inference.model import ExecutionContext, Graph, InferenceError, InferenceErrorKind
from . import call as guest_call
from .memory import GuestMemory, GuestMemoryError

MODULE = "wasi_ephemeral_nn"


class Errno(IntEnum):
    SUCCESS = 0
    INVALID_ARGUMENT = 1
    INVALID_ENCODING = 2
    MISSING_MEMORY = 3
    BUSY = 4
    RUNTIME_ERROR = 5
    UNSUPPORTED_OPERATION = 6
    TOO_LARGE = 7
    NOT_FOUND = 8


class GraphEncoding(IntEnum):
    OPENVINO = 0
    ONNX = 1
    TENSORFLOW = 2
    PYTORCH = 3
    TENSORFLOWLITE = 4
    AUTODETECT = 5


class ExecutionTarget(IntEnum):
    CPU = 0
    GPU = 1
    TPU = 2


# tensor_type codes accepted for each model input dtype. Guests built with the wasi-nn
# crate <= 0.5 send U8 = 2, I32 = 3; crate 0.6 (and WasmEdge >= 0.15) U8 = 3, I32 = 4.
# The model's dtype says which was meant. int8 inputs take the U8 codes (raw bytes):
# witx has no i8 type.
ACCEPTED_TYPE_CODES: dict[str, frozenset[int]] = {
    "float16": frozenset({0}),
    "float32": frozenset({1}),
    "uint8": frozenset({2, 3}),
    "int8": frozenset({2, 3}),
    "int32": frozenset({3, 4}),
    "int64": frozenset({5}),
}

MAX_RANK = 8
MAX_BUILDERS = 16
TENSOR_STRUCT_SIZE = 20


class NnFailure(Exception):
    def __init__(self, errno: Errno, message: str) -> None:
        super().__init__(message)
        self.errno = errno


_INFERENCE_ERRNO = {
    InferenceErrorKind.INVALID_ARGUMENT: Errno.INVALID_ARGUMENT,
    InferenceErrorKind.BUSY: Errno.BUSY,
    InferenceErrorKind.RUNTIME: Errno.RUNTIME_ERROR,
}


def _abi(function: Callable[..., None]) -> Callable[..., int]:
    """Run one ABI function for the current guest run and turn every failure into an errno."""

    @functools.wraps(function)
    def host_function(caller: wasmtime.Caller, *args: int) -> int:
        call = guest_call.current()
        try:
            # wasmtime passes i32 as signed; every value in this ABI is a u32.
            function(GuestMemory(caller), call, *(arg & 0xFFFFFFFF for arg in args))
            return Errno.SUCCESS
        except NnFailure as exc:
            errno, message = exc.errno, str(exc)
        except GuestMemoryError as exc:
            errno, message = Errno.INVALID_ARGUMENT, str(exc)
        except InferenceError as exc:
            errno, message = _INFERENCE_ERRNO[exc.kind], str(exc)
        except Exception as exc:  # a host bug must not become a trap with a stray exception
            errno, message = Errno.RUNTIME_ERROR, f"{type(exc).__name__}: {exc}"
        call.note(f"wasi-nn {function.__name__}: {message} (errno {errno.value} {errno.name.lower()})")
        return errno

    return host_function


def _graph(call: guest_call.GuestCall, handle: int) -> Graph:
    graph = call.graphs[handle] if 0 <= handle < len(call.graphs) else None
    if graph is None:
        raise NnFailure(Errno.INVALID_ARGUMENT, f"unknown graph {handle}")
    return graph


def _context(call: guest_call.GuestCall, handle: int) -> ExecutionContext:
    context = call.contexts[handle] if 0 <= handle < len(call.contexts) else None
    if context is None:
        raise NnFailure(Errno.INVALID_ARGUMENT, f"unknown execution context {handle}")
    return context


def _new_graph_handle(call: guest_call.GuestCall, graph: Graph) -> int:
    call.graphs.append(graph)
    return len(call.graphs) - 1


def _refuse_past_deadline(call: guest_call.GuestCall) -> None:
    if call.past_deadline():
        raise NnFailure(Errno.RUNTIME_ERROR, "deadline exceeded")


@_abi
def load(
    memory: GuestMemory,
    call: guest_call.GuestCall,
    builders_ptr: int,
    builders_len: int,
    encoding: int,
    target: int,
    graph_out: int,
) -> None:
    memory.view(graph_out, 4)
    if builders_len > MAX_BUILDERS:
        raise NnFailure(Errno.INVALID_ARGUMENT, f"{builders_len} graph builders")
    entries = memory.read_u32s(builders_ptr, 2 * builders_len)
    builders = [memory.view(int(entries[2 * i]), int(entries[2 * i + 1])) for i in range(builders_len)]
    if target not in ExecutionTarget._value2member_map_:
        raise NnFailure(Errno.INVALID_ARGUMENT, f"unknown execution target {target}")
    if encoding != GraphEncoding.TENSORFLOWLITE:
        raise NnFailure(Errno.INVALID_ENCODING, f"encoding {encoding} is not supported (TFLite only)")
    if target != ExecutionTarget.CPU:
        raise NnFailure(Errno.INVALID_ARGUMENT, "the TFLite backend runs on the CPU only")
    if len(builders) != 1:
        raise NnFailure(Errno.INVALID_ARGUMENT, f"TFLite takes 1 graph builder, got {len(builders)}")
    if call.loaded_graphs >= call.limits.max_loaded_graphs or call.graph_cache is None:
        raise NnFailure(Errno.BUSY, "too many models loaded from bytes in one run")
    _refuse_past_deadline(call)
    try:
        graph = call.graph_cache.get_or_load(builders[0].tobytes())
    except ValueError as exc:
        raise NnFailure(Errno.INVALID_ARGUMENT, str(exc)) from exc
    call.loaded_graphs += 1
    memory.write_u32(graph_out, _new_graph_handle(call, graph))


def _load_named(
    memory: GuestMemory, call: guest_call.GuestCall, name_ptr: int, name_len: int, graph_out: int
) -> None:
    memory.view(graph_out, 4)
    try:
        name = memory.read_bytes(name_ptr, name_len).rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NnFailure(Errno.INVALID_ARGUMENT, "graph name is not UTF-8") from exc
    handle = call.graph_ids_by_name.get(name)
    if handle is None:
        graph = call.named_graphs.get(name)
        if graph is None:
            raise NnFailure(Errno.NOT_FOUND, f"no model named {name!r}")
        handle = call.graph_ids_by_name[name] = _new_graph_handle(call, graph)
    memory.write_u32(graph_out, handle)


@_abi
def load_by_name(
    memory: GuestMemory, call: guest_call.GuestCall, name_ptr: int, name_len: int, graph_out: int
) -> None:
    _load_named(memory, call, name_ptr, name_len, graph_out)


@_abi
def load_by_name_with_config(
    memory: GuestMemory,
    call: guest_call.GuestCall,
    name_ptr: int,
    name_len: int,
    config_ptr: int,
    config_len: int,
    graph_out: int,
) -> None:
    # The TFLite backend has no load-time options: the config is checked, then ignored.
    memory.view(config_ptr, config_len)
    _load_named(memory, call, name_ptr, name_len, graph_out)


@_abi
def init_execution_context(
    memory: GuestMemory, call: guest_call.GuestCall, graph: int, context_out: int
) -> None:
    memory.view(context_out, 4)
    model = _graph(call, graph)
    if call.live_contexts() >= call.limits.max_contexts:
        raise NnFailure(Errno.BUSY, f"more than {call.limits.max_contexts} execution contexts")
    _refuse_past_deadline(call)
    call.contexts.append(model.new_context())
    memory.write_u32(context_out, len(call.contexts) - 1)


@_abi
def set_input(
    memory: GuestMemory, call: guest_call.GuestCall, context: int, index: int, tensor_ptr: int
) -> None:
    dims_ptr, dims_len, type_word, data_ptr, data_len = (
        int(v) for v in memory.read_u32s(tensor_ptr, TENSOR_STRUCT_SIZE // 4)
    )
    if dims_len > MAX_RANK:
        raise NnFailure(Errno.INVALID_ARGUMENT, f"rank {dims_len} is too large")
    dims = tuple(int(d) for d in memory.read_u32s(dims_ptr, dims_len))
    data = memory.view(data_ptr, data_len)
    ctx = _context(call, context)
    if index >= len(ctx.spec.inputs):
        raise NnFailure(Errno.INVALID_ARGUMENT, f"input {index} does not exist")
    spec = ctx.spec.inputs[index]
    if data_len != spec.nbytes:
        raise NnFailure(Errno.INVALID_ARGUMENT, f"input {index} takes {spec.nbytes} bytes, got {data_len}")
    if dims_len != len(spec.shape):
        raise NnFailure(Errno.INVALID_ARGUMENT, f"input {index} has rank {len(spec.shape)}, got {dims_len}")
    if dims != spec.shape:
        raise NnFailure(
            Errno.INVALID_ARGUMENT, f"input {index} has shape {list(spec.shape)}, got {list(dims)}"
        )
    type_code = type_word & 0xFF  # a u8 enum; padding bytes may hold garbage
    if type_code not in ACCEPTED_TYPE_CODES.get(spec.dtype, frozenset()):
        raise NnFailure(
            Errno.INVALID_ARGUMENT, f"tensor type {type_code} does not match the model's {spec.dtype}"
        )
    ctx.set_input(index, data)


@_abi
def compute(memory: GuestMemory, call: guest_call.GuestCall, context: int) -> None:
    ctx = _context(call, context)
    _refuse_past_deadline(call)
    started = time.perf_counter()
    try:
        ctx.compute()
    finally:
        call.add_host_time("invoke", time.perf_counter() - started)


@_abi
def get_output(
    memory: GuestMemory,
    call: guest_call.GuestCall,
    context: int,
    index: int,
    out_ptr: int,
    out_max: int,
    bytes_written_ptr: int,
) -> None:
    memory.view(bytes_written_ptr, 4)
    out = memory.view(out_ptr, out_max)
    ctx = _context(call, context)
    if index >= len(ctx.spec.outputs):
        raise NnFailure(Errno.INVALID_ARGUMENT, f"output {index} does not exist")
    data = ctx.output(index).reshape(-1).view(np.uint8)
    if data.size > out_max:
        # As every released WasmEdge: invalid_argument, bytes_written left untouched.
        raise NnFailure(
            Errno.INVALID_ARGUMENT, f"output {index} needs {data.size} bytes, buffer has {out_max}"
        )
    out[: data.size] = data
    memory.write_u32(bytes_written_ptr, data.size)


@_abi
def unload(memory: GuestMemory, call: guest_call.GuestCall, graph: int) -> None:
    _graph(call, graph)
    call.graphs[graph] = None
    call.graph_ids_by_name = {n: h for n, h in call.graph_ids_by_name.items() if h != graph}


@_abi
def finalize_execution_context(memory: GuestMemory, call: guest_call.GuestCall, context: int) -> None:
    _context(call, context).release()
    call.contexts[context] = None


_I32 = wasmtime.ValType.i32()

FUNCTIONS: dict[str, tuple[Callable[..., int], int]] = {
    # name: (host function, number of i32 parameters); every one returns an i32 errno
    "load": (load, 5),
    "load_by_name": (load_by_name, 3),
    "load_by_name_with_config": (load_by_name_with_config, 5),
    "init_execution_context": (init_execution_context, 2),
    "set_input": (set_input, 3),
    "compute": (compute, 1),
    "get_output": (get_output, 5),
    "unload": (unload, 1),
    "finalize_execution_context": (finalize_execution_context, 1),
}


def define(linker: wasmtime.Linker) -> None:
    for name, (function, arity) in FUNCTIONS.items():
        func_type = wasmtime.FuncType([_I32] * arity, [_I32])
        linker.define_func(MODULE, name, func_type, function, access_caller=True)
