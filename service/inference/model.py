"""A loaded TFLite model (a graph): its tensor specs and a per-thread pool of ready interpreters.

Interpreters are not thread-safe and cost ~6 ms to build, so each worker thread keeps
its own ready ones per graph. An execution context borrows one for a request and gives
it back, wiped, at the end: no tensor data survives from one request to the next.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from .litert import Interpreter, new_interpreter

# Idle interpreters a thread keeps per graph; more are built on demand and dropped after.
MAX_IDLE_PER_THREAD = 2


class InferenceErrorKind(Enum):
    INVALID_ARGUMENT = "invalid_argument"
    BUSY = "busy"
    RUNTIME = "runtime"


class InferenceError(Exception):
    def __init__(self, kind: InferenceErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: uint8, int8, float32, ...
    shape: tuple[int, ...]
    scale: float = 0.0  # quantisation; 0 means not quantised
    zero_point: int = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": self.scale,
            "zero_point": self.zero_point,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(int(d) for d in data["shape"]),
            scale=float(data.get("scale", 0.0)),
            zero_point=int(data.get("zero_point", 0)),
        )

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> TensorSpec:
        scale, zero_point = details.get("quantization", (0.0, 0))
        return cls(
            name=str(details["name"]),
            dtype=np.dtype(details["dtype"]).name,
            shape=tuple(int(d) for d in details["shape"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )


@dataclass(frozen=True)
class ModelSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


def inspect_model(model: bytes) -> ModelSpec:
    """Validate TFLite bytes by loading them; raise ValueError if they are not a usable model."""
    return Graph(model).spec


class Graph:
    """One model, loaded once and shared by all threads."""

    def __init__(self, model: bytes, num_threads: int = 1) -> None:
        self.model = model
        self.digest = hashlib.sha256(model).hexdigest()
        self.num_threads = num_threads
        self._local = threading.local()
        try:
            first = new_interpreter(model, num_threads)
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with C++ messages
            raise ValueError(f"not a usable TFLite model: {exc}") from exc
        self.spec = ModelSpec(
            inputs=tuple(TensorSpec.from_details(d) for d in first.get_input_details()),
            outputs=tuple(TensorSpec.from_details(d) for d in first.get_output_details()),
        )
        self._input_indexes = tuple(d["index"] for d in first.get_input_details())
        self._output_indexes = tuple(d["index"] for d in first.get_output_details())
        self._release(first)

    def new_context(self) -> ExecutionContext:
        """Borrow a ready interpreter from this thread's pool (or build one)."""
        idle: list[Interpreter] = self._idle()
        if idle:
            interpreter = idle.pop()
        else:
            try:
                interpreter = new_interpreter(self.model, self.num_threads)
            except Exception as exc:
                raise InferenceError(InferenceErrorKind.BUSY, f"interpreter: {exc}") from exc
        return ExecutionContext(self, interpreter)

    def warm(self, count: int = 1) -> None:
        """Make sure the calling thread has `count` ready interpreters (call at start-up)."""
        idle = self._idle()
        while len(idle) < min(count, MAX_IDLE_PER_THREAD):
            idle.append(new_interpreter(self.model, self.num_threads))

    def idle_count(self) -> int:
        return len(self._idle())

    def _idle(self) -> list[Interpreter]:
        idle = getattr(self._local, "idle", None)
        if idle is None:
            idle = self._local.idle = []
        return idle

    def _release(self, interpreter: Interpreter) -> None:
        # Wipe what the request left behind, so the next one can neither read it nor be
        # skewed by it: recurrent state (an LSTM's variables) changes later answers.
        interpreter.reset_all_variables()
        for index in self._input_indexes + self._output_indexes:
            interpreter.tensor(index)().fill(0)
        idle = self._idle()
        if len(idle) < MAX_IDLE_PER_THREAD:
            idle.append(interpreter)


class ExecutionContext:
    """A graph plus a borrowed interpreter, for one request."""

    def __init__(self, graph: Graph, interpreter: Interpreter) -> None:
        self.graph = graph
        self._interpreter: Interpreter | None = interpreter

    @property
    def spec(self) -> ModelSpec:
        return self.graph.spec

    def _live(self) -> Interpreter:
        if self._interpreter is None:
            raise InferenceError(InferenceErrorKind.INVALID_ARGUMENT, "context is finalized")
        return self._interpreter

    def set_input(self, index: int, data: np.ndarray) -> None:
        """Copy raw bytes (a uint8 array of exactly the tensor's byte size) into input `index`."""
        spec = self.spec.inputs[index]
        array = data.view(np.dtype(spec.dtype)).reshape(spec.shape)
        try:
            self._live().set_tensor(self.graph._input_indexes[index], array)
        except ValueError as exc:
            raise InferenceError(InferenceErrorKind.BUSY, f"set_tensor: {exc}") from exc

    def compute(self) -> None:
        try:
            self._live().invoke()
        except RuntimeError as exc:
            raise InferenceError(InferenceErrorKind.BUSY, f"invoke: {exc}") from exc

    def output(self, index: int) -> np.ndarray:
        """A copy of output `index` (the interpreter's own buffer stays private)."""
        return self._live().get_tensor(self.graph._output_indexes[index])

    def release(self) -> None:
        """Give the interpreter back to this thread's pool. Safe to call twice."""
        if self._interpreter is not None:
            interpreter, self._interpreter = self._interpreter, None
            self.graph._release(interpreter)
