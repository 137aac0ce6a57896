"""The LiteRT backend (TFLite models): graphs with a per-thread pool of ready interpreters.

Interpreters are not thread-safe and cost ~6 ms to build, so each worker thread keeps
its own ready ones per graph. An execution context borrows one for a request and gives
it back, wiped, at the end: no tensor data survives from one request to the next.

A request alone on the graph uses every core: each graph also owns one shared interpreter
with `solo_threads` threads, lent to a context opened while no other context of the graph
is open and none has been for `SOLO_QUIET_S` (and the shared one is free); every other context
gets a per-thread interpreter of `num_threads`. Idle, a request gets the cores; under load, one
thread per request and worker (contexts overlap every few requests, and between two overlaps
the shared one's thread pool would only wake threads to compete for busy cores).
LiteRT (`ai-edge-litert`) is used, with the legacy tflite-runtime as a fallback.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import numpy as np

from .backend import Encoding, Target, register
from .model import InferenceError, InferenceErrorKind, ModelSpec, TensorSpec

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - only on machines without LiteRT
    from tflite_runtime.interpreter import Interpreter

__all__ = ["LITERT", "Interpreter", "LiteRtContext", "LiteRtGraph", "new_interpreter"]

# Idle interpreters a thread keeps per graph; more are built on demand and dropped after.
MAX_IDLE_PER_THREAD = 2
# After two contexts of a graph were open at once, how long before its shared interpreter is lent
# again. Under load contexts overlap every few tens of ms, and lent in the gaps it cost 2-6 % more
# CPU a request; a longer spell (1 s) slowed the first lone requests after a burst (docs/performance.md).
SOLO_QUIET_S = 0.1


# LiteRT's native code writes this to stderr (fd 2, past Python) the first time a process builds an
# interpreter (TFLITE_LOG_PROD_ONCE in the XNNPACK delegate); no setting of LiteRT turns it off.
XNNPACK_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
_first_build = threading.Lock()
_notice_hidden = False


def new_interpreter(model: bytes, num_threads: int) -> Interpreter:
    """An interpreter with its tensors allocated. Costs ~6 ms (XNNPACK packs the weights)."""
    if not _notice_hidden:
        return _first_interpreter(model, num_threads)
    return _build(model, num_threads)


def _build(model: bytes, num_threads: int) -> Interpreter:
    interpreter = Interpreter(model_content=model, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def _first_interpreter(model: bytes, num_threads: int) -> Interpreter:
    """The process's first build, with fd 2 sent to a file meanwhile: what else was written to
    stderr in those milliseconds (by any thread) is written on after it, less the XNNPACK notice."""
    global _notice_hidden
    with _first_build:
        if _notice_hidden:
            return _build(model, num_threads)
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                interpreter = _build(model, num_threads)
                _notice_hidden = True  # built once: LiteRT has written its notice
                return interpreter
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                rest = captured.read().replace(XNNPACK_NOTICE, b"", 1)
                if rest:
                    os.write(2, rest)


class LiteRtGraph:
    """One TFLite model, loaded once and shared by all threads."""

    encoding = Encoding.TENSORFLOWLITE

    def __init__(
        self, model: bytes, num_threads: int = 1, solo_threads: int = 1, solo_quiet_s: float = SOLO_QUIET_S
    ) -> None:
        self.model = model
        self.digest = hashlib.sha256(model).hexdigest()
        self.num_threads = num_threads
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the three below
        self._open_contexts = 0
        self._overlapped_at = -math.inf  # when two contexts were last open at once (monotonic)
        self._solo_quiet_s = solo_quiet_s
        self._solo: Interpreter | None = None  # the shared interpreter, while it is not lent
        try:
            first = new_interpreter(model, num_threads)
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with C++ messages
            raise ValueError(f"not a usable TFLite model: {exc}") from exc
        self.spec = ModelSpec(
            inputs=tuple(TensorSpec.from_details(d) for d in first.get_input_details()),
            outputs=tuple(TensorSpec.from_details(d) for d in first.get_output_details()),
        )
        self.input_indexes = tuple(d["index"] for d in first.get_input_details())
        self.output_indexes = tuple(d["index"] for d in first.get_output_details())
        self.release(first)
        self.solo_threads = solo_threads if solo_threads > num_threads else 0  # 0: no shared one
        if self.solo_threads:
            self._solo = new_interpreter(model, self.solo_threads)

    def new_context(self) -> LiteRtContext:
        """Borrow the shared interpreter if no other context is open or has been lately, else a
        ready one from this thread's pool (or build one)."""
        with self._lock:
            self._open_contexts += 1
            now = time.monotonic()
            if self._open_contexts > 1:
                self._overlapped_at = now
            alone = self._open_contexts == 1 and now - self._overlapped_at >= self._solo_quiet_s
            solo, self._solo = (self._solo, None) if alone else (None, self._solo)
        if solo is not None:
            return LiteRtContext(self, solo, shared=True)
        try:
            return LiteRtContext(self, self._per_thread(), shared=False)
        except BaseException:
            self.context_closed(None)
            raise

    def _per_thread(self) -> Interpreter:
        idle: list[Interpreter] = self._idle()
        if idle:
            interpreter = idle.pop()
        else:
            try:
                interpreter = new_interpreter(self.model, self.num_threads)
            except Exception as exc:
                raise InferenceError(InferenceErrorKind.BUSY, f"interpreter: {exc}") from exc
        return interpreter

    def solo_free(self) -> bool:
        """Whether the shared interpreter is there and not lent (False without one)."""
        with self._lock:
            return self._solo is not None

    def context_closed(self, solo: Interpreter | None) -> None:
        """A context is done; `solo`: the shared interpreter it gives back, wiped."""
        with self._lock:
            self._open_contexts -= 1
            if solo is not None:
                self._solo = solo

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

    def wipe(self, interpreter: Interpreter) -> None:
        """Wipe what a request left behind, so the next one can neither read it nor be skewed
        by it: recurrent state (an LSTM's variables) changes later answers."""
        interpreter.reset_all_variables()
        for index in self.input_indexes + self.output_indexes:
            interpreter.tensor(index)().fill(0)

    def release(self, interpreter: Interpreter) -> None:
        """Wipe the interpreter and pool it in this thread's pool."""
        self.wipe(interpreter)
        idle = self._idle()
        if len(idle) < MAX_IDLE_PER_THREAD:
            idle.append(interpreter)


class LiteRtContext:
    """A graph plus a borrowed interpreter, for one request."""

    def __init__(self, graph: LiteRtGraph, interpreter: Interpreter, *, shared: bool) -> None:
        self.graph = graph
        self._interpreter: Interpreter | None = interpreter
        self.shared = shared  # the graph's shared interpreter (every core), not this thread's

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
            self._live().set_tensor(self.graph.input_indexes[index], array)
        except ValueError as exc:
            raise InferenceError(InferenceErrorKind.BUSY, f"set_tensor: {exc}") from exc

    def compute(self) -> None:
        try:
            self._live().invoke()
        except RuntimeError as exc:
            raise InferenceError(InferenceErrorKind.BUSY, f"invoke: {exc}") from exc

    def output(self, index: int) -> np.ndarray:
        """A copy of output `index` (the interpreter's own buffer stays private)."""
        return self._live().get_tensor(self.graph.output_indexes[index])

    def release(self) -> None:
        """Give the interpreter back, wiped (to the graph, or to this thread's pool). Safe to
        call twice."""
        if self._interpreter is not None:
            interpreter, self._interpreter = self._interpreter, None
            if self.shared:
                self.graph.wipe(interpreter)
                self.graph.context_closed(interpreter)
            else:
                self.graph.release(interpreter)
                self.graph.context_closed(None)


class LiteRtBackend:
    encoding = Encoding.TENSORFLOWLITE
    targets = frozenset({Target.CPU})
    builder_count = 1
    file_suffix = ".tflite"

    def load(self, builders: Sequence[bytes], num_threads: int = 1, solo_threads: int = 1) -> LiteRtGraph:
        # The count is checked where a guest gives it (wasi_nn.load); the other callers pass one.
        return LiteRtGraph(builders[0], num_threads, solo_threads)


LITERT = LiteRtBackend()
register(LITERT)
