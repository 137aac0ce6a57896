"""The inference backend seam: load a graph, open an execution context, set inputs, compute, read outputs.

In the spirit of wasmtime's wasi-nn `backend/mod.rs`: the host ABIs (service/wasm/) translate guest
memory and errnos and know nothing of any one framework; a backend turns model bytes into a `Graph`
and gives out `ExecutionContext`s. Backends are found by graph encoding. LiteRT (TFLite) is the one
registered now (service/inference/litert.py); another, e.g. ONNX, is one module that implements
`Backend` and calls `register()` at import, plus its import in `service/inference/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Protocol

import numpy as np

from .model import ModelSpec


class Encoding(Enum):
    """Graph encodings, named as wasi-nn names them (the ABI maps its numbers onto these)."""

    OPENVINO = "openvino"
    ONNX = "onnx"
    TENSORFLOW = "tensorflow"
    PYTORCH = "pytorch"
    TENSORFLOWLITE = "tensorflowlite"


class Target(Enum):
    CPU = "cpu"
    GPU = "gpu"
    TPU = "tpu"


class ExecutionContext(Protocol):
    """A graph plus whatever state one request's inference needs (for LiteRT: a pooled interpreter)."""

    @property
    def spec(self) -> ModelSpec: ...

    def set_input(self, index: int, data: np.ndarray) -> None:
        """Raw bytes (uint8, exactly the input's byte size) into input `index`."""

    def compute(self) -> None: ...

    def output(self, index: int) -> np.ndarray:
        """A copy of output `index`."""
        ...

    def release(self) -> None:
        """Give back what the context holds; safe to call twice."""


class Graph(Protocol):
    """A loaded model, shared by every request and thread."""

    encoding: Encoding
    digest: str  # sha256 of the model bytes
    spec: ModelSpec

    def new_context(self) -> ExecutionContext: ...

    def warm(self, count: int = 1) -> None:
        """Prepare `count` contexts for the calling thread (called at start-up)."""


class Backend(Protocol):
    encoding: Encoding
    targets: frozenset[Target]
    builder_count: int  # how many graph builders (byte blobs) a model takes
    file_suffix: str  # how a model file of this encoding is named on disk, e.g. ".tflite"

    def load(self, builders: Sequence[bytes], num_threads: int = 1, solo_threads: int = 1) -> Graph:
        """A graph from its builders; ValueError if they are not a usable model. Contexts get
        `num_threads` threads each, or `solo_threads` when no other context is open."""
        ...


_BACKENDS: dict[Encoding, Backend] = {}


def register(backend: Backend) -> None:
    _BACKENDS[backend.encoding] = backend


def backend_for(encoding: Encoding) -> Backend | None:
    return _BACKENDS.get(encoding)


def load_graph(
    model: bytes, encoding: Encoding = Encoding.TENSORFLOWLITE, num_threads: int = 1, solo_threads: int = 1
) -> Graph:
    """A graph for one model file; ValueError if no backend takes the encoding or the bytes."""
    backend = backend_for(encoding)
    if backend is None:
        raise ValueError(f"no inference backend for {encoding.value} models")
    return backend.load([model], num_threads, solo_threads)


def inspect_model(model: bytes, encoding: Encoding = Encoding.TENSORFLOWLITE) -> ModelSpec:
    """Validate model bytes by loading them; ValueError if they are not a usable model."""
    return load_graph(model, encoding).spec
