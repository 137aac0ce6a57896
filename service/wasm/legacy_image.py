"""WasmEdge's legacy image functions (module `wasmedge_image`, prefixed names), as the
`wasmedge_tensorflow_interface` crate 0.2 imports them:

    wasmedge_image_load_{jpg,png}_to_{rgb8,bgr8,rgb32f,bgr32f}(
        img_ptr, img_len, width, height, out_ptr) -> i32

They decode the whole image, resize it the way WasmEdge did (Boost.GIL's align-corners
bilinear with truncation, see imaging.resize_align_corners) and write it interleaved
(HWC) at out_ptr: width*height*3 bytes (rgb8, bgr8) or as many little-endian f32 values
(rgb32f, bgr32f: the resized byte / 255). 0 is success and 1 any failure, as in WasmEdge.

There is no output length: WasmEdge writes blindly. Here the whole output range is
checked against the guest's memory first, and a range that does not fit fails with 1
without writing anything.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import wasmtime

from ..imaging import decode_full_rgb, resize_align_corners
from . import call as guest_call
from .abi import define_errno_functions, errno_function, timed_decode
from .image import ERRNOS, ImageErrno
from .memory import GuestMemory

MODULE = "wasmedge_image"

_FORMATS = {"jpg": ("JPEG",), "png": ("PNG",)}


def _encode(pixels: np.ndarray, layout: str) -> np.ndarray:
    """(h, w, 3) RGB bytes in the function's output layout, as a flat byte array."""
    if layout.startswith("bgr"):
        pixels = pixels[..., ::-1]
    if layout.endswith("32f"):
        # Divided in double, stored as float, as WasmEdge does.
        return (pixels / 255.0).astype("<f4").reshape(-1).view(np.uint8)
    return np.ascontiguousarray(pixels).reshape(-1)


def _loader(name: str, image_format: str, layout: str) -> Callable[..., int]:
    bytes_per_value = 4 if layout.endswith("32f") else 1

    @errno_function("", ERRNOS, name)
    def load(
        memory: GuestMemory,
        call: guest_call.GuestCall,
        in_ptr: int,
        in_len: int,
        width: int,
        height: int,
        out_ptr: int,
    ) -> None:
        encoded = memory.view(in_ptr, in_len)
        out = memory.view(out_ptr, width * height * 3 * bytes_per_value)
        max_pixels = call.limits.max_image_pixels

        def decode() -> np.ndarray:
            pixels = decode_full_rgb(encoded.data, max_pixels=max_pixels, formats=_FORMATS[image_format])
            return resize_align_corners(pixels, width, height)

        out[:] = _encode(timed_decode(call, ImageErrno.FAIL, decode), layout)

    return load


FUNCTIONS = tuple(
    _loader(f"wasmedge_image_load_{image_format}_to_{layout}", image_format, layout)
    for image_format in ("jpg", "png")
    for layout in ("rgb8", "bgr8", "rgb32f", "bgr32f")
)


def define(linker: wasmtime.Linker) -> None:
    define_errno_functions(linker, MODULE, FUNCTIONS)
