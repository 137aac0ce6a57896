"""The LiteRT interpreter, with the legacy tflite-runtime as a fallback when LiteRT is absent."""

from __future__ import annotations

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - only on machines without LiteRT
    from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]

__all__ = ["Interpreter", "new_interpreter"]


def new_interpreter(model: bytes, num_threads: int) -> Interpreter:
    """An interpreter with its tensors allocated. Costs ~6 ms (XNNPACK packs the weights)."""
    interpreter = Interpreter(model_content=model, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter
