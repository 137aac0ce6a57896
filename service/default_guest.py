"""The interface of the default business-logic guest, host side.

The guest side is wasm/include/classify_interface.h and wasm/src/classify.c: change them together.
The guest is a WASI command. It gets the image on stdin and, on its command line, the model's name
and everything it needs to feed and read it: the input's type and shape, how pixels become input
values (`(x - mean) / std`), how output values become scores (`(q - zero_point) * scale`), the
top-k and, optionally, the labels file. It prints `{"predictions": [{"index", "label", "score"}, ...]}`
(`label` null without a labels file). The built-in guest is run without one: the host attaches
the model's labels to its predictions (service/pipeline.py), saving a file read over WASI per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from importlib.resources import as_file, files
from pathlib import Path

from .errors import invalid_argument
from .inference.model import ModelSpec, TensorSpec

MODEL_DIR_IN_GUEST = "/model"  # the model's read-only directory (its labels file is there)
GUEST_DTYPES = {"uint8": "u8", "int8": "i8", "float32": "f32"}


class Exit(IntEnum):
    """The guest's exit codes (sysexits.h values)."""

    OK = 0
    USAGE = 64  # a bad command line: a host bug
    BAD_IMAGE = 65  # no or bad image: the caller's fault
    MODEL_NOT_FOUND = 66
    INFERENCE = 70  # wasi-nn or internal failure
    IO = 74  # labels, stdin, stdout


@dataclass(frozen=True)
class InputConversion:
    """Pixel value x (0..255) -> input value (x - mean) / std (rounded and clamped for u8/i8)."""

    mean: float
    std: float


# Conventional conversions by input type: float models expect [-1, 1] (MobileNet-style), int8
# models the pixels shifted into [-128, 127], uint8 models the pixels as they are.
INPUT_CONVERSIONS = {
    "float32": InputConversion(mean=127.5, std=127.5),
    "int8": InputConversion(mean=128.0, std=1.0),
    "uint8": InputConversion(mean=0.0, std=1.0),
}

# Outputs that are not quantized are read as the type's range mapped onto [0, 1].
UNQUANTIZED_OUTPUT = {"uint8": (1 / 255, 0), "int8": (1 / 255, -128)}


def guest_bytes() -> bytes:
    """The built guest, shipped in the package (wasm/bin is the service.guests package)."""
    with as_file(files("service.guests") / "classify.wasm") as path:
        return Path(path).read_bytes()


def arguments(model: str, spec: ModelSpec, labels_file: str | None, top_k: int) -> list[str]:
    """The guest's command line for one request; invalid_argument if it cannot take the model."""
    if len(spec.inputs) != 1 or not spec.outputs:
        raise invalid_argument(f"model {model!r} must have one input and an output for the default guest")
    tensor_in, tensor_out = spec.inputs[0], spec.outputs[0]
    for tensor in (tensor_in, tensor_out):
        if tensor.dtype not in GUEST_DTYPES:
            raise invalid_argument(f"tensor {tensor.name!r} has type {tensor.dtype}, not u8/i8/f32")
    conversion = INPUT_CONVERSIONS[tensor_in.dtype]
    args = [
        "--model", model,
        "--input-type", GUEST_DTYPES[tensor_in.dtype],
        "--input-shape", "x".join(str(d) for d in tensor_in.shape),
        "--input-mean", repr(conversion.mean),
        "--input-std", repr(conversion.std),
        "--output-type", GUEST_DTYPES[tensor_out.dtype],
        *_output_args(tensor_out),
        "--top-k", str(top_k),
    ]  # fmt: skip
    if labels_file is not None:
        args += ["--labels", f"{MODEL_DIR_IN_GUEST}/{labels_file}"]
    return args


def _output_args(tensor: TensorSpec) -> list[str]:
    if tensor.dtype == "float32":
        return []
    scale, zero_point = (
        (tensor.scale, tensor.zero_point) if tensor.scale else UNQUANTIZED_OUTPUT[tensor.dtype]
    )
    return ["--output-scale", repr(scale), "--output-zero-point", str(zero_point)]
