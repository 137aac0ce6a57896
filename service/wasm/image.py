"""Module `wasmedge_image`: WasmEdge's image-plugin ABI over host-side Pillow decoding.

    load_jpg / load_png / load_image(in_ptr, in_len, out_w, out_h, out_type, out_ptr, out_len) -> errno

The output is written interleaved (HWC): RGB8/BGR8 as bytes, RGB32F/BGR32F as
little-endian f32 in [0, 1]. Errno 0 is success and 1 any failure, as in WasmEdge;
the reason goes to the run's notes.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

import numpy as np
import wasmtime

from ..imaging import decode_rgb
from . import call as guest_call
from .abi import AbiFailure, Errnos, define_errno_functions, errno_function, timed_decode
from .memory import GuestMemory

MODULE = "wasmedge_image"


class ImageErrno(IntEnum):
    SUCCESS = 0
    FAIL = 1


class OutputType(IntEnum):
    RGB8 = 0
    BGR8 = 1
    RGB32F = 2
    BGR32F = 3


def _pixels_for(out_type: OutputType, rgb: np.ndarray) -> np.ndarray:
    if out_type in (OutputType.BGR8, OutputType.BGR32F):
        rgb = rgb[..., ::-1]
    if out_type in (OutputType.RGB32F, OutputType.BGR32F):
        return (rgb.astype("<f4") / np.float32(255.0)).reshape(-1).view(np.uint8)
    return np.ascontiguousarray(rgb).reshape(-1)


ERRNOS = Errnos(
    success=ImageErrno.SUCCESS,
    memory=ImageErrno.FAIL,
    runtime=ImageErrno.FAIL,
    inference={},
    missing_memory_traps=True,  # as in WasmEdge
)


def _loader(name: str, formats: tuple[str, ...] | None) -> Callable[..., int]:
    @errno_function(MODULE, ERRNOS, name)
    def load(
        memory: GuestMemory,
        call: guest_call.GuestCall,
        in_ptr: int,
        in_len: int,
        out_w: int,
        out_h: int,
        out_type: int,
        out_ptr: int,
        out_len: int,
    ) -> None:
        encoded = memory.view(in_ptr, in_len)
        if out_type not in OutputType._value2member_map_:
            raise AbiFailure(ImageErrno.FAIL, f"unknown output type {out_type}")
        kind = OutputType(out_type)
        channel_bytes = 4 if kind in (OutputType.RGB32F, OutputType.BGR32F) else 1
        need = out_w * out_h * 3 * channel_bytes
        if out_len < need:
            raise AbiFailure(
                ImageErrno.FAIL, f"output buffer has {out_len} bytes, {out_w}x{out_h} needs {need}"
            )
        out = memory.view(out_ptr, need)
        max_pixels = call.limits.max_image_pixels
        rgb = timed_decode(
            call,
            ImageErrno.FAIL,
            lambda: decode_rgb(encoded.data, out_w, out_h, max_pixels=max_pixels, formats=formats),
        )
        out[:] = _pixels_for(kind, rgb)

    return load


_I32 = wasmtime.ValType.i32()

FUNCTIONS = (_loader("load_jpg", ("JPEG",)), _loader("load_png", ("PNG",)), _loader("load_image", None))


def define(linker: wasmtime.Linker) -> None:
    define_errno_functions(linker, MODULE, FUNCTIONS)
