"""The classify pipeline: request -> business-logic guest -> host functions -> response.

`Classifier` owns the shared state, built once: the wasm host, the business-logic
guest, and the loaded models (each a graph with its interpreter pools). A request
gets its own GuestCall, which sees only the model it asked for, at the version that
was current when it started.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import ClassifierError, ErrorKind, invalid_argument
from .inference.cache import GraphCache
from .inference.model import Graph, TensorSpec
from .stores.base import StoredModel
from .stores.local import LocalModelStore
from .wasm.call import GuestCall
from .wasm.host import Guest, GuestResult, Preopen, WasmHost

DEFAULT_TOP_K = 5
MODEL_DIR_IN_GUEST = "/model"

# Exit codes of the default guest (sysexits.h), and what they mean for the caller.
EXIT_BAD_IMAGE = 65
EXIT_MODEL_NOT_FOUND = 66

_GUEST_DTYPES = {"uint8": "u8", "int8": "i8", "float32": "f32"}


def default_guest_bytes() -> bytes:
    with as_file(files("service.guests") / "classify.wasm") as path:
        return Path(path).read_bytes()


@dataclass(frozen=True)
class LoadedModel:
    stored: StoredModel
    graph: Graph
    guest_args: tuple[str, ...]  # the model's spec, as the default guest takes it

    @property
    def name(self) -> str:
        return self.stored.manifest.name

    @property
    def version(self) -> int:
        return self.stored.manifest.version


def guest_args_for(stored: StoredModel) -> tuple[str, ...]:
    """Describe the model's input and output to the default guest."""
    spec = stored.manifest.spec
    if len(spec.inputs) != 1 or not spec.outputs:
        raise invalid_argument(f"model {stored.manifest.name!r} must have one input and an output")
    tensor_in, tensor_out = spec.inputs[0], spec.outputs[0]
    for tensor in (tensor_in, tensor_out):
        if tensor.dtype not in _GUEST_DTYPES:
            raise invalid_argument(f"tensor {tensor.name!r} has type {tensor.dtype}, not u8/i8/f32")
    args = [
        "--model",
        stored.manifest.name,
        "--input-type",
        _GUEST_DTYPES[tensor_in.dtype],
        "--input-shape",
        "x".join(str(d) for d in tensor_in.shape),
        "--output-type",
        _GUEST_DTYPES[tensor_out.dtype],
        *_quantisation_args(tensor_out),
    ]
    if stored.labels_path is not None:
        args += ["--labels", f"{MODEL_DIR_IN_GUEST}/{stored.labels_path.name}"]
    return tuple(args)


def _quantisation_args(tensor: TensorSpec) -> list[str]:
    if not tensor.scale:
        return []
    return ["--output-scale", repr(tensor.scale), "--output-zero-point", str(tensor.zero_point)]


class Classifier:
    """Classifies images through the business-logic guest. Thread-safe."""

    def __init__(
        self, settings: Settings, store: LocalModelStore | None = None, guest_wasm: bytes | None = None
    ) -> None:
        self.settings = settings
        self.store = store or LocalModelStore(settings.store_dir)
        self.host = WasmHost(settings.module_cache_dir)
        self.graph_cache = GraphCache(num_threads=settings.interpreter_threads)
        if guest_wasm is None:
            guest_wasm = settings.guest.read_bytes() if settings.guest else default_guest_bytes()
        self.guest: Guest = self.host.load_guest(guest_wasm, "classify")
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.host.close()

    def model(self, name: str) -> LoadedModel:
        """The loaded model, loading it from the store on first use."""
        loaded = self._models.get(name)
        if loaded is not None:
            return loaded
        with self._lock:
            loaded = self._models.get(name)
            if loaded is None:
                stored = self.store.get(name)
                graph = Graph(stored.model_path.read_bytes(), self.settings.interpreter_threads)
                loaded = LoadedModel(stored, graph, guest_args_for(stored))
                self._models[name] = loaded
        return loaded

    def classify(self, image: bytes, model: str, top_k: int = DEFAULT_TOP_K) -> dict[str, Any]:
        started = time.perf_counter()
        loaded = self.model(model)
        num_classes = loaded.stored.manifest.num_classes
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
            raise invalid_argument(f"top_k must be an integer from 1 to {num_classes}, got {top_k!r}")
        if not image:
            raise invalid_argument("the image is empty")
        call = GuestCall(
            limits=self.settings.limits,
            named_graphs={loaded.name: loaded.graph},
            graph_cache=self.graph_cache,
        )
        result = self.host.run(
            self.guest,
            [*loaded.guest_args, "--top-k", str(top_k)],
            call=call,
            stdin=image,
            preopens=[Preopen(loaded.stored.directory, MODEL_DIR_IN_GUEST)],
        )
        body = _response_body(result)
        return {
            "model": loaded.name,
            "version": loaded.version,
            **body,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        }


def _response_body(result: GuestResult) -> dict[str, Any]:
    """The guest's stdout as the response, or the error its run ended with."""
    notes = "; ".join(result.call.notes)
    if result.deadline_exceeded:
        raise ClassifierError(
            ErrorKind.DEADLINE_EXCEEDED,
            f"the guest ran past its deadline of {result.call.limits.timeout_s:g} s",
        )
    if result.output_overflow:
        raise ClassifierError(
            ErrorKind.RESOURCE_EXHAUSTED,
            f"the guest wrote more than {result.call.limits.output_bytes} bytes of output",
        )
    if result.trap is not None:
        raise ClassifierError(ErrorKind.GUEST_FAILED, f"the guest trapped: {result.trap}")
    if result.exit_code == EXIT_BAD_IMAGE:
        raise invalid_argument(f"the image could not be decoded: {notes or _last_line(result.stderr)}")
    if result.exit_code == EXIT_MODEL_NOT_FOUND:
        raise ClassifierError(ErrorKind.NOT_FOUND, _last_line(result.stderr) or "model not found")
    if result.exit_code != 0:
        detail = "; ".join(filter(None, [_last_line(result.stderr), notes]))
        raise ClassifierError(
            ErrorKind.GUEST_FAILED, f"the guest exited with code {result.exit_code}: {detail}"
        )
    text = result.stdout.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return {"output": text}  # a guest printing plain text
    return body if isinstance(body, dict) else {"output": body}


def _last_line(data: bytes) -> str:
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else ""
