"""The host's image decoding (service/imaging.py) in process, beyond its limits (tests/test_image_limits.py):
transparency as Boost.GIL reads it, the orientation of what decode_rgb hands out, JPEG's draft scale for
a turned picture, and the dtype of every array. Images are made here with Pillow; the expected pixels
are exact."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.imaging import decode_full_rgb, decode_rgb


def encoded(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def with_orientation(image: Image.Image, orientation: int, format: str = "PNG") -> bytes:
    exif = image.getexif()
    exif[0x0112] = orientation
    return encoded(image, format, exif=exif, **({"quality": 90} if format == "JPEG" else {}))


# An asymmetric picture: every pixel different, so any flip or turn shows.
ASYMMETRIC = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3) * 5


def test_an_rgb_png_with_a_transparent_colour_is_premultiplied_as_gil_reads_it() -> None:
    """GIL's PNG reader turns a tRNS chunk into alpha (png_set_tRNS_to_alpha): that colour becomes black."""
    image = Image.fromarray(np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8))
    image.info["transparency"] = (10, 20, 30)
    pixels = decode_full_rgb(encoded(image))
    assert pixels.dtype == np.uint8 and pixels.tolist() == [[[0, 0, 0], [40, 50, 60]]]
    image.info.pop("transparency")
    assert decode_full_rgb(encoded(image)).tolist() == [[[10, 20, 30], [40, 50, 60]]]


def test_a_grey_png_with_a_transparent_level_is_premultiplied_too() -> None:
    image = Image.fromarray(np.array([[7, 200]], np.uint8))
    image.info["transparency"] = 7
    assert decode_full_rgb(encoded(image)).tolist() == [[[0, 0, 0], [200, 200, 200]]]


def test_sixteen_bit_grey_with_a_transparent_level_is_scaled_and_stays_opaque() -> None:
    image = Image.fromarray(np.array([[0, 256, 65535]], np.uint16))
    image.info["transparency"] = 256
    assert decode_full_rgb(encoded(image))[0, :, 0].tolist() == [0, 1, 255]


def test_a_palette_with_alpha_is_premultiplied() -> None:
    image = Image.new("PA", (3, 1))
    image.putpalette([10, 20, 30, 200, 100, 50])
    for x, pixel in enumerate(((1, 128), (1, 255), (0, 0))):
        image.putpixel((x, 0), pixel)
    data = encoded(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "PA"
    pixels = decode_full_rgb(data)
    assert pixels.dtype == np.uint8 and pixels.tolist() == [[[100, 50, 25], [200, 100, 50], [0, 0, 0]]]


def test_an_image_without_an_orientation_is_handed_out_as_it_is() -> None:
    data = encoded(Image.fromarray(ASYMMETRIC))
    for pixels in (decode_full_rgb(data), decode_rgb(data, 4, 3)):
        assert pixels.dtype == np.uint8 and (pixels == ASYMMETRIC).all()


# Where the picture's first pixel goes for each EXIF orientation, on a 4x3 picture.
FIRST_PIXEL = {1: (0, 0), 2: (0, 3), 3: (2, 3), 4: (2, 0), 5: (0, 0), 6: (0, 2), 7: (3, 2), 8: (3, 0)}


@pytest.mark.parametrize("orientation", sorted(FIRST_PIXEL))
def test_decode_rgb_turns_the_picture_by_its_orientation(orientation: int) -> None:
    data = with_orientation(Image.fromarray(ASYMMETRIC), orientation)
    size = (3, 4) if orientation in (5, 6, 7, 8) else (4, 3)
    pixels = decode_rgb(data, *size)
    assert pixels.shape == (size[1], size[0], 3)
    [first] = np.argwhere((pixels == ASYMMETRIC[0, 0]).all(axis=-1)).tolist()
    assert tuple(first) == FIRST_PIXEL[orientation]
    assert (pixels == decode_full_rgb(data)).all()  # the same picture as the legacy path's


@pytest.mark.parametrize(("orientation", "turn"), [(6, -1), (8, 1)])
def test_a_turned_jpeg_is_drafted_at_the_scale_of_its_stored_size(orientation: int, turn: int) -> None:
    """JPEG's draft decodes at 1/2, 1/4 or 1/8 scale, the smallest that still covers the output. For a
    picture stored on its side the output's width is the stored height: a turned JPEG decoded to 8x16
    is exactly the unturned one decoded to 16x8, turned (a quarter scale for both, no resize)."""
    y, x = np.mgrid[0:32, 0:64]
    smooth = Image.fromarray(np.stack([x * 4, y * 8, (x + y) * 2], axis=-1).astype(np.uint8))
    upright = decode_rgb(encoded(smooth, "JPEG", quality=90), 16, 8)
    turned = decode_rgb(with_orientation(smooth, orientation, "JPEG"), 8, 16)
    assert turned.shape == (16, 8, 3) and (turned == np.rot90(upright, turn)).all()


def grey(mode: str, values: list[int], format: str) -> bytes:
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    return encoded(Image.frombytes(mode, (len(values), 1), np.array(values, dtype).tobytes()), format)


# Pillow opens 16-bit grey as I;16 from PNG, I;16B from big-endian TIFF, and I;16L only from its own IM
# format (deprecated: when it goes, no file opens as I;16L).
@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("mode", "format"), [("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16L", "IM")])
def test_sixteen_bit_grey_of_either_byte_order_is_scaled_to_eight_bits(mode: str, format: str) -> None:
    data = grey(mode, [0, 256, 65535], format)
    assert Image.open(io.BytesIO(data)).mode == mode
    assert decode_full_rgb(data)[0].tolist() == [[0] * 3, [1] * 3, [255] * 3]
    assert decode_rgb(data, 3, 1)[0].tolist() == [[0] * 3, [1] * 3, [255] * 3]


def test_sixteen_bit_grey_one_past_eight_bits_is_scaled() -> None:
    assert decode_full_rgb(grey("I;16", [0, 128, 256], "PNG"))[0, :, 0].tolist() == [0, 0, 1]


def test_thirty_two_bit_grey_is_scaled_as_sixteen_bit_and_clipped_to_eight_bits() -> None:
    data = grey("I", [-5, 0, 70000, 2**31 - 1], "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert decode_full_rgb(data)[0, :, 0].tolist() == [0, 0, 255, 255]
    # within 16 bits it is scaled as 16-bit grey is (Pillow's own convert would clip 256 to 255)
    assert decode_full_rgb(grey("I", [0, 256, 65535], "TIFF"))[0, :, 0].tolist() == [0, 1, 255]
    assert decode_full_rgb(grey("I", [0, 128, 255], "TIFF"))[0, :, 0].tolist() == [0, 128, 255]


def test_decode_rgb_resizes_bilinearly() -> None:
    """Pillow's bilinear filter: output pixel x samples the source at (x + 0.5) * 4 / 8 - 0.5 between
    pixel centres; pixel 3 at 1.25: 50 + 0.25 * 150 = 87.5, rounded to 88 (a bicubic filter would ring:
    47, 40 ... 210, 203)."""
    step = encoded(Image.fromarray(np.array([[50, 50, 200, 200]], np.uint8)))
    pixels = decode_rgb(step, 8, 1)
    assert pixels.dtype == np.uint8
    assert pixels[0, :, 0].tolist() == [50, 50, 50, 88, 163, 200, 200, 200]
