"""Module `wasi_ephemeral_nn`: the witx wasi-nn ABI over the inference backends.

A thin layer: it reads and bounds-checks what the guest passes, applies WasmEdge's checks
(in its order, with its errnos), finds the backend by graph encoding
(service/inference/backend.py), and keeps the run's graphs and execution contexts in its
own handle tables (`NnContext`). Every failure is an errno (service/wasm/abi.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import wasmtime

from ..inference.backend import Encoding, ExecutionContext, Graph, Target, backend_for
from . import call as guest_call
from .abi import AbiFailure, Errnos, define_errno_functions, errno_function, inference_errnos
from .handles import HandleTable
from .memory import GuestMemory

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


# The ABI's numbers for the backend-neutral encodings and targets.
ENCODINGS = {
    GraphEncoding.OPENVINO: Encoding.OPENVINO,
    GraphEncoding.ONNX: Encoding.ONNX,
    GraphEncoding.TENSORFLOW: Encoding.TENSORFLOW,
    GraphEncoding.PYTORCH: Encoding.PYTORCH,
    GraphEncoding.TENSORFLOWLITE: Encoding.TENSORFLOWLITE,
}
TARGETS = {ExecutionTarget.CPU: Target.CPU, ExecutionTarget.GPU: Target.GPU, ExecutionTarget.TPU: Target.TPU}

ERRNOS = Errnos(
    success=Errno.SUCCESS,
    memory=Errno.INVALID_ARGUMENT,
    runtime=Errno.RUNTIME_ERROR,
    inference=inference_errnos(Errno),
    missing_memory_traps=True,
)
_abi = errno_function("wasi-nn", ERRNOS)


@dataclass
class NnContext:
    """This run's wasi-nn handles: graphs and execution contexts count from 0, never reused."""

    graphs: HandleTable[Graph] = field(default_factory=HandleTable)
    contexts: HandleTable[ExecutionContext] = field(default_factory=HandleTable)
    graph_ids_by_name: dict[str, int] = field(default_factory=dict)

    def live_contexts(self) -> int:
        return len(self.contexts)

    def close(self) -> None:
        for context in self.contexts.clear():
            context.release()
        self.graphs.clear()
        self.graph_ids_by_name.clear()


def _nn(call: guest_call.GuestCall) -> NnContext:
    return call.context(NnContext)


def _graph(call: guest_call.GuestCall, handle: int) -> Graph:
    graph = _nn(call).graphs.get(handle)
    if graph is None:
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"unknown graph {handle}")
    return graph


def _context(call: guest_call.GuestCall, handle: int) -> ExecutionContext:
    context = _nn(call).contexts.get(handle)
    if context is None:
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"unknown execution context {handle}")
    return context


def _refuse_past_deadline(call: guest_call.GuestCall) -> None:
    if call.past_deadline():
        raise AbiFailure(Errno.RUNTIME_ERROR, "deadline exceeded")


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
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"{builders_len} graph builders")
    entries = memory.read_u32s(builders_ptr, 2 * builders_len)
    builders = [memory.view(entries[2 * i], entries[2 * i + 1]) for i in range(builders_len)]
    if target not in ExecutionTarget._value2member_map_:
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"unknown execution target {target}")
    known = ENCODINGS.get(GraphEncoding(encoding)) if encoding in GraphEncoding._value2member_map_ else None
    backend = backend_for(known) if known is not None else None
    if backend is None:
        raise AbiFailure(Errno.INVALID_ENCODING, f"encoding {encoding} is not supported")
    if TARGETS[ExecutionTarget(target)] not in backend.targets:
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"the {backend.encoding.value} backend does not run there")
    if len(builders) != backend.builder_count:
        raise AbiFailure(
            Errno.INVALID_ARGUMENT,
            f"{backend.encoding.value} takes {backend.builder_count} graph builder(s), got {len(builders)}",
        )
    if call.loaded_graphs >= call.limits.max_loaded_graphs or call.graph_cache is None:
        raise AbiFailure(Errno.BUSY, "too many models loaded from bytes in one run")
    _refuse_past_deadline(call)
    try:
        graph = call.graph_cache.get_or_load(backend, [b.tobytes() for b in builders])
    except ValueError as exc:
        raise AbiFailure(Errno.INVALID_ARGUMENT, str(exc)) from exc
    call.loaded_graphs += 1
    memory.write_u32(graph_out, _nn(call).graphs.insert(graph))


def _load_named(
    memory: GuestMemory, call: guest_call.GuestCall, name_ptr: int, name_len: int, graph_out: int
) -> None:
    memory.view(graph_out, 4)
    try:
        name = memory.read_bytes(name_ptr, name_len).rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AbiFailure(Errno.INVALID_ARGUMENT, "graph name is not UTF-8") from exc
    nn = _nn(call)
    handle = nn.graph_ids_by_name.get(name)
    if handle is None:
        graph = call.named_graphs.get(name)
        if graph is None:
            raise AbiFailure(Errno.NOT_FOUND, f"no model named {name!r}")
        handle = nn.graph_ids_by_name[name] = nn.graphs.insert(graph)
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
    # No backend takes load-time options yet: the config is checked, then ignored.
    memory.view(config_ptr, config_len)
    _load_named(memory, call, name_ptr, name_len, graph_out)


@_abi
def init_execution_context(
    memory: GuestMemory, call: guest_call.GuestCall, graph: int, context_out: int
) -> None:
    memory.view(context_out, 4)
    model = _graph(call, graph)
    if call.live_contexts() >= call.limits.max_contexts:
        raise AbiFailure(Errno.BUSY, f"more than {call.limits.max_contexts} execution contexts")
    _refuse_past_deadline(call)
    memory.write_u32(context_out, _nn(call).contexts.insert(model.new_context()))


@_abi
def set_input(
    memory: GuestMemory, call: guest_call.GuestCall, context: int, index: int, tensor_ptr: int
) -> None:
    dims_ptr, dims_len, type_word, data_ptr, data_len = memory.read_u32s(tensor_ptr, TENSOR_STRUCT_SIZE // 4)
    if dims_len > MAX_RANK:
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"rank {dims_len} is too large")
    dims = memory.read_u32s(dims_ptr, dims_len)
    data = memory.view(data_ptr, data_len)
    ctx = _context(call, context)
    if index >= len(ctx.spec.inputs):
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"input {index} does not exist")
    spec = ctx.spec.inputs[index]
    if data_len != spec.nbytes:
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"input {index} takes {spec.nbytes} bytes, got {data_len}")
    if dims_len != len(spec.shape):
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"input {index} has rank {len(spec.shape)}, got {dims_len}")
    if dims != spec.shape:
        raise AbiFailure(
            Errno.INVALID_ARGUMENT, f"input {index} has shape {list(spec.shape)}, got {list(dims)}"
        )
    type_code = type_word & 0xFF  # a u8 enum; padding bytes may hold garbage
    if type_code not in ACCEPTED_TYPE_CODES.get(spec.dtype, frozenset()):
        raise AbiFailure(
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
        raise AbiFailure(Errno.INVALID_ARGUMENT, f"output {index} does not exist")
    data = ctx.output(index).reshape(-1).view(np.uint8)
    if data.size > out_max:
        # As every released WasmEdge: invalid_argument, bytes_written left untouched.
        raise AbiFailure(
            Errno.INVALID_ARGUMENT, f"output {index} needs {data.size} bytes, buffer has {out_max}"
        )
    out[: data.size] = data
    memory.write_u32(bytes_written_ptr, data.size)


@_abi
def unload(memory: GuestMemory, call: guest_call.GuestCall, graph: int) -> None:
    _graph(call, graph)
    nn = _nn(call)
    nn.graphs.remove(graph)
    nn.graph_ids_by_name = {n: h for n, h in nn.graph_ids_by_name.items() if h != graph}


@_abi
def finalize_execution_context(memory: GuestMemory, call: guest_call.GuestCall, context: int) -> None:
    _context(call, context).release()
    _nn(call).contexts.remove(context)


FUNCTIONS = (
    load,
    load_by_name,
    load_by_name_with_config,
    init_execution_context,
    set_input,
    compute,
    get_output,
    unload,
    finalize_execution_context,
)


def define(linker: wasmtime.Linker) -> None:
    define_errno_functions(linker, MODULE, FUNCTIONS)
