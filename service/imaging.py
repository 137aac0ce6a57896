"""Host-side image decoding with Pillow: any common format to RGB pixels at a requested size.

JPEG is decoded in draft mode (DCT-domain downscaling, ~2.3x faster for a 1024x768 photo
going to 224x224), EXIF orientation is applied, every colour mode becomes RGB, animations
give their first frame, and the pixel count is checked from the header before any pixel
is decoded, so decompression bombs fail fast.

WasmEdge's legacy image functions get their own path (`decode_full_rgb` then
`resize_align_corners`): a full decode and Boost.GIL's resize, so that guests written for
WasmEdge see the pixels it gave them (../shared/docs/wasm-abi.md §3.4).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000
MAX_OUTPUT_PIXELS = 16_000_000

# decode_rgb checks the pixel count from the header against its own, configurable limit.
# Pillow's fixed one (89 Mpx, an error at 179 Mpx) would override larger configured limits
# and report its own number instead of the configured one.
Image.MAX_IMAGE_PIXELS = None

# Orientations (EXIF 0x0112) that swap width and height, and all that change the image.
_TRANSPOSED = {5, 6, 7, 8}
_REORIENTED = {2, 3, 4, 5, 6, 7, 8}


class ImageError(Exception):
    """The bytes are not an image we can decode within the limits."""


def decode_rgb(
    data: bytes | memoryview,
    width: int,
    height: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Decode, orient and resize to a (height, width, 3) uint8 RGB array (bilinear)."""
    _check_output_size(width, height)
    with _decoding():
        image = _open(data, max_pixels, formats)
        orientation = image.getexif().get(0x0112, 1)
        draft_size = (height, width) if orientation in _TRANSPOSED else (width, height)
        image.draft("RGB", draft_size)  # no-op for formats other than JPEG
        image = _orient(image, orientation)
        image = _to_rgb(image)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def decode_full_rgb(
    data: bytes | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Decode at full size and orient to a (H, W, 3) uint8 RGB array, as Boost.GIL converts:
    grey is replicated, and colour with alpha is multiplied by the alpha (over black). A PNG's
    tRNS chunk is alpha too: GIL's reader asks libpng for it (png_set_tRNS_to_alpha), so the
    transparent colour of an 8-bit RGB or grey PNG becomes black (16-bit grey is scaled, its tRNS
    not applied)."""
    with _decoding():
        image = _open(data, max_pixels, formats)
        image = _orient(image, image.getexif().get(0x0112, 1))
        if image.mode in ("RGBA", "LA", "PA") or (
            image.mode in ("P", "L", "RGB") and "transparency" in image.info
        ):
            rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
            # GIL's 8-bit channel_multiply: c * a / 255, rounded (its div255).
            product = rgba[..., :3] * rgba[..., 3:] + 128
            return ((product + (product >> 8)) >> 8).astype(np.uint8)
        return np.asarray(_to_rgb(image), dtype=np.uint8)


def resize_align_corners(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (H, W, C) uint8 pixels as Boost.GIL `resize_view` with `bilinear_sampler` does.

    Destination pixel x samples the source at x * (W-1)/(w-1) (corners aligned); the four
    neighbours are weighted in double precision, in GIL's order; the last row and column
    take two taps, the corner one; the sum is truncated to uint8.
    """
    _check_output_size(width, height)
    x0, x1, fx = _sample_axis(width, pixels.shape[1])
    y0, y1, fy = _sample_axis(height, pixels.shape[0])
    fx = fx[None, :, None]
    fy = fy[:, None, None]
    rows0, rows1 = y0[:, None], y1[:, None]
    total = pixels[rows0, x0] * ((1 - fx) * (1 - fy))  # uint8 * double: exact, in double
    total = total + pixels[rows0, x1] * (fx * (1 - fy))
    total = total + pixels[rows1, x0] * ((1 - fx) * fy)
    total = total + pixels[rows1, x1] * (fx * fy)
    return total.astype(np.uint8)  # truncation, as GIL's cast


def _sample_axis(size: int, source_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per destination index: the two source indexes and the weight of the second.

    On the source's last index GIL takes one tap (the 2-tap/1-tap branches): the second
    index repeats the first with weight 0, which gives the same double sums."""
    scale = (source_size - 1) / max(size - 1, 1)
    position = np.arange(size, dtype=np.float64) * scale
    first = np.floor(position).astype(np.int64)
    last = first >= source_size - 1
    first = np.where(last, source_size - 1, first)
    weight = np.where(last, 0.0, position - first)
    second = np.where(last, first, first + 1)
    return first, second, weight


def image_extension(data: bytes | memoryview) -> str:
    """A file extension for encoded image bytes, from their signature ("bin" if unknown)."""
    head = bytes(data[:12])
    for signature, extension in _SIGNATURES:
        if head.startswith(signature):
            return extension
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "bin"


_SIGNATURES = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


def _check_output_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0 or width * height > MAX_OUTPUT_PIXELS:
        raise ImageError(f"output size {width}x{height} is out of range")


def _open(data: bytes | memoryview, max_pixels: int, formats: tuple[str, ...] | None) -> Image.Image:
    """Open (header only) and refuse images over the pixel limit before any pixel is decoded."""
    if len(data) == 0:
        raise ImageError("no image data")
    image = Image.open(io.BytesIO(data), formats=formats)
    source_w, source_h = image.size
    if source_w * source_h > max_pixels:
        raise ImageError(
            f"image is {source_w}x{source_h} = {source_w * source_h} pixels, over the limit of {max_pixels}"
        )
    return image


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    """Pillow's many failure types, as ImageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"could not decode image: {exc}") from exc


def _orient(image: Image.Image, orientation: int) -> Image.Image:
    # exif_transpose returns a full-size copy even when there is nothing to turn.
    return ImageOps.exif_transpose(image) if orientation in _REORIENTED else image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: scale to 8 bits (a plain convert would clip everything to white).
        pixels = np.asarray(image).astype(np.int64)
        if pixels.max(initial=0) > 255:
            pixels >>= 8
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")
