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

import time
from collections.abc import Callable

import numpy as np
import wasmtime

from ..imaging import ImageError, decode_full_rgb, resize_align_corners
from . import call as guest_call
from .memory import GuestMemory, GuestMemoryError, MissingMemory

MODULE = "wasmedge_image"
SUCCESS, FAIL = 0, 1

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

    def load(caller: wasmtime.Caller, in_ptr: int, in_len: int, width: int, height: int, out_ptr: int) -> int:
        call = guest_call.current()
        # wasmtime passes i32 as signed; every value in this ABI is a u32.
        in_ptr, in_len, width, height, out_ptr = (
            arg & 0xFFFFFFFF for arg in (in_ptr, in_len, width, height, out_ptr)
        )
        try:
            memory = GuestMemory(caller)
            encoded = memory.view(in_ptr, in_len)
            out = memory.view(out_ptr, width * height * 3 * bytes_per_value)
            if call.past_deadline():
                raise ImageError("deadline exceeded")
            started = time.perf_counter()
            try:
                pixels = decode_full_rgb(
                    encoded.data, max_pixels=call.limits.max_image_pixels, formats=_FORMATS[image_format]
                )
                resized = resize_align_corners(pixels, width, height)
            finally:
                call.add_host_time("decode", time.perf_counter() - started)
            out[:] = _encode(resized, layout)
            return SUCCESS
        except (ImageError, GuestMemoryError) as exc:
            call.note(f"{name}: {exc}")
            return FAIL
        except MissingMemory:
            raise  # a trap, as in WasmEdge
        except Exception as exc:  # a host bug must not become a trap with a stray exception
            call.note(f"{name}: {type(exc).__name__}: {exc}")
            return FAIL

    load.__name__ = name
    return load


_I32 = wasmtime.ValType.i32()

FUNCTIONS: dict[str, Callable[..., int]] = {
    f"wasmedge_image_load_{image_format}_to_{layout}": _loader(
        f"wasmedge_image_load_{image_format}_to_{layout}", image_format, layout
    )
    for image_format in ("jpg", "png")
    for layout in ("rgb8", "bgr8", "rgb32f", "bgr32f")
}


def define(linker: wasmtime.Linker) -> None:
    func_type = wasmtime.FuncType([_I32] * 5, [_I32])
    for name, function in FUNCTIONS.items():
        linker.define_func(MODULE, name, func_type, function, access_caller=True)
