"""Small TFLite models built in the tests, for what the shared models cannot do (an invoke that fails)."""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

GATHER_CONSTANTS = np.array([0.5, 1.5, 2.5, 3.5], dtype=np.float32)


def gather_model() -> bytes:
    """value = GATHER_CONSTANTS[index]: input "index" (int32 [1]), output "value" (float32 [1]).
    An index past the constants makes the invoke fail ("gather index out of bounds")."""

    def tensor(name: str, shape: list[int], kind: int, buffer: int) -> schema.TensorT:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, kind, buffer
        return t

    empty, constants = schema.BufferT(), schema.BufferT()
    constants.data = list(GATHER_CONSTANTS.tobytes())
    subgraph = schema.SubGraphT()
    subgraph.tensors = [
        tensor("index", [1], schema.TensorType.INT32, 0),
        tensor("constants", [len(GATHER_CONSTANTS)], schema.TensorType.FLOAT32, 1),
        tensor("value", [1], schema.TensorType.FLOAT32, 0),
    ]
    subgraph.inputs, subgraph.outputs = [0], [2]
    gather = schema.OperatorT()
    gather.opcodeIndex, gather.inputs, gather.outputs = 0, [1, 0], [2]
    gather.builtinOptionsType = schema.BuiltinOptions.GatherOptions
    gather.builtinOptions = schema.GatherOptionsT()
    subgraph.operators = [gather]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.GATHER
    code.version = 1
    model = schema.ModelT()
    model.version, model.buffers = 3, [empty, constants]
    model.operatorCodes, model.subgraphs = [code], [subgraph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
