"""The classify pipeline: request -> business-logic guest -> host functions -> response.

`Classifier` owns the shared state, built once: the wasm host, the business-logic
guest, and the model registry (each model a graph with its interpreter pools). A
request gets its own GuestCall, which sees only the model it asked for, at the version
that was active when it started.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import ClassifierError, ErrorKind, invalid_argument
from .inference.cache import GraphCache
from .registry import MODEL_DIR_IN_GUEST, LoadedModel, ModelRegistry
from .stores.base import Store
from .stores.local import LocalStore
from .wasm.call import GuestCall
from .wasm.host import Guest, GuestResult, Preopen, WasmHost

DEFAULT_TOP_K = 5

# Exit codes of the default guest (sysexits.h), and what they mean for the caller.
EXIT_BAD_IMAGE = 65
EXIT_MODEL_NOT_FOUND = 66

# A failed guest whose memory is this close to its cap is taken to have run out of memory:
# a few large allocations' worth (the default guest grows its buffers by doubling).
MEMORY_HEADROOM = 2 << 20


def default_guest_bytes() -> bytes:
    with as_file(files("service.guests") / "classify.wasm") as path:
        return Path(path).read_bytes()


class Classifier:
    """Classifies images through the business-logic guest. Thread-safe."""

    def __init__(
        self, settings: Settings, store: Store | None = None, guest_wasm: bytes | None = None
    ) -> None:
        self.settings = settings
        self.store: Store = store or LocalStore(settings.store_dir)
        self.models = ModelRegistry(self.store, settings.interpreter_threads)
        self.host = WasmHost(settings.module_cache_dir)
        self.graph_cache = GraphCache(num_threads=settings.interpreter_threads)
        if guest_wasm is None:
            guest_wasm = settings.guest.read_bytes() if settings.guest else default_guest_bytes()
        self.guest: Guest = self.host.load_guest(guest_wasm, "classify")

    def close(self) -> None:
        self.host.close()

    def model(self, name: str) -> LoadedModel:
        """The active version of a model, loading it from the store on first use."""
        return self.models.get(name)

    def set_guest(self, wasm: bytes, name: str = "classify") -> Guest:
        """Replace the business-logic guest; requests in flight finish on the old one."""
        self.guest = self.host.load_guest(wasm, name)
        return self.guest

    def classify(
        self, image: bytes, model: str, top_k: int = DEFAULT_TOP_K, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Classify one image; `timeout_s` shortens the configured deadline (a caller's own)."""
        started = time.perf_counter()
        guest = self.guest  # one guest for the whole request, even if it is replaced meanwhile
        loaded = self.model(model)
        num_classes = loaded.stored.manifest.num_classes
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
            raise invalid_argument(f"top_k must be an integer from 1 to {num_classes}, got {top_k!r}")
        if not image:
            raise invalid_argument("the image is empty")
        limits = self.settings.limits
        if timeout_s is not None and timeout_s < limits.timeout_s:
            limits = replace(limits, timeout_s=max(timeout_s, 0.0))
        call = GuestCall(
            limits=limits,
            named_graphs={loaded.name: loaded.graph},
            graph_cache=self.graph_cache,
        )
        result = self.host.run(
            guest,
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
    limits = result.call.limits
    # Output first: a guest that ignores failed writes keeps writing until its deadline.
    if result.output_overflow:
        raise ClassifierError(
            ErrorKind.RESOURCE_EXHAUSTED, f"the guest wrote more than {limits.output_bytes} bytes of output"
        )
    if result.deadline_exceeded:
        raise ClassifierError(
            ErrorKind.DEADLINE_EXCEEDED, f"the guest ran past its deadline of {limits.timeout_s:g} s"
        )
    failed = result.trap is not None or result.exit_code not in (0, EXIT_BAD_IMAGE, EXIT_MODEL_NOT_FOUND)
    if failed and result.memory_bytes + MEMORY_HEADROOM > limits.memory_bytes:
        # memory.grow fails silently at the cap; a guest failing right there ran out of memory.
        ended = (
            f"trapped: {result.trap}" if result.trap is not None else f"exited with code {result.exit_code}"
        )
        raise ClassifierError(
            ErrorKind.RESOURCE_EXHAUSTED,
            f"the guest ran out of memory (limit {limits.memory_bytes >> 20} MiB) and {ended}",
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
