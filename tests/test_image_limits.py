"""The host's image decoding (service/imaging.py) in process, at its limits: the pixel limit and the output
size at the exact boundary, each refusal's message, the format signatures, and the exact pixel arithmetic
of the paths that must match WasmEdge (alpha premultiplied as Boost.GIL, corners aligned in the resize).

tests/test_image.py checks the same through guests and the shared test images; these run in the test
process on images made here, so mutation testing (tools/mutation.py) sees the limit checks.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.imaging import (
    MAX_OUTPUT_PIXELS,
    ImageError,
    decode_full_rgb,
    decode_rgb,
    image_extension,
    resize_align_corners,
)


def encoded(image: Image.Image, format: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=format)
    return out.getvalue()


RED_4x3 = encoded(Image.new("RGB", (4, 3), (255, 0, 0)))


def test_an_image_of_exactly_the_pixel_limit_decodes_and_one_pixel_more_does_not() -> None:
    assert decode_rgb(RED_4x3, 2, 2, max_pixels=12).shape == (2, 2, 3)
    assert decode_full_rgb(RED_4x3, max_pixels=12).shape == (3, 4, 3)
    message = r"^image is 4x3 = 12 pixels, over the limit of 11$"
    with pytest.raises(ImageError, match=message):
        decode_rgb(RED_4x3, 2, 2, max_pixels=11)
    with pytest.raises(ImageError, match=message):
        decode_full_rgb(RED_4x3, max_pixels=11)


def test_the_output_size_is_refused_at_zero_and_past_its_limit() -> None:
    for width, height in ((0, 1), (1, 0), (-1, 5), (5, -1), (MAX_OUTPUT_PIXELS + 1, 1), (4001, 4000)):
        with pytest.raises(ImageError, match=rf"^output size {width}x{height} is out of range$"):
            decode_rgb(RED_4x3, width, height)
        with pytest.raises(ImageError, match=rf"^output size {width}x{height} is out of range$"):
            resize_align_corners(np.zeros((3, 4, 3), np.uint8), width, height)


def test_the_largest_output_and_the_smallest_are_made() -> None:
    assert decode_rgb(RED_4x3, 1, 1).tolist() == [[[255, 0, 0]]]
    largest = decode_rgb(RED_4x3, MAX_OUTPUT_PIXELS, 1)
    assert largest.shape == (1, MAX_OUTPUT_PIXELS, 3) and (largest[0, -1] == (255, 0, 0)).all()


def test_no_bytes_is_no_image_data() -> None:
    for data in (b"", memoryview(b"")):
        with pytest.raises(ImageError, match=r"^no image data$"):
            decode_rgb(data, 2, 2)
    with pytest.raises(ImageError, match=r"^no image data$"):
        decode_full_rgb(b"")


def test_bytes_of_no_image_format_and_a_format_not_allowed_are_not_recognised() -> None:
    with pytest.raises(ImageError, match=r"^not a recognised image format$"):
        decode_rgb(b"hello, not an image", 2, 2)
    with pytest.raises(ImageError, match=r"^not a recognised image format$"):
        decode_rgb(RED_4x3, 2, 2, formats=("JPEG",))
    assert decode_rgb(RED_4x3, 2, 2, formats=("PNG",)).shape == (2, 2, 3)


def test_a_truncated_image_is_a_decode_error_not_a_crash() -> None:
    photo = encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match=r"^could not decode image: "):
        decode_rgb(photo[: len(photo) // 2], 8, 8)


@pytest.mark.parametrize(
    ("head", "extension"),
    [
        (b"\xff\xd8\xff\xe0", "jpg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"GIF89a", "gif"),
        (b"BM\x00\x00", "bmp"),
        (b"II*\x00", "tif"),
        (b"MM\x00*", "tif"),
        (b"RIFF\x00\x00\x00\x00WEBP", "webp"),
        (b"RIFF\x00\x00\x00\x00WAVE", "bin"),
        (b"\x00asm", "bin"),
        (b"", "bin"),
    ],
)
def test_image_extension_from_the_signature(head: bytes, extension: str) -> None:
    assert image_extension(head + b"\x00" * 16) == extension
    assert image_extension(memoryview(head + b"\x00" * 16)) == extension


def test_image_extension_reads_the_twelve_bytes_of_a_webp_signature() -> None:
    assert image_extension(b"RIFF\x00\x00\x00\x00WEBP") == "webp"  # exactly 12 bytes
    assert image_extension(b"RIFF\x00\x00\x00\x00WEB") == "bin"


def test_sixteen_bit_grey_is_scaled_to_eight_bits_only_when_it_uses_more() -> None:
    wide = Image.fromarray(np.array([[0, 256, 65535]], np.uint16))  # I;16, past 8 bits: >> 8
    narrow = Image.fromarray(np.array([[0, 128, 255]], np.uint16))  # within 8 bits: kept
    assert wide.mode == narrow.mode == "I;16"
    assert decode_full_rgb(encoded(wide))[0, :, 0].tolist() == [0, 1, 255]
    assert decode_full_rgb(encoded(narrow))[0, :, 0].tolist() == [0, 128, 255]
    grey = decode_rgb(encoded(narrow), 3, 1)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_colour_with_alpha_is_premultiplied_rounded_as_gil_does() -> None:
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([colour, 255 - colour, colour // 2, alpha], axis=-1).astype(np.uint8)
    pixels = decode_full_rgb(encoded(Image.fromarray(rgba, "RGBA")))
    product = rgba[..., :3].astype(np.int64) * rgba[..., 3:].astype(np.int64)
    assert (pixels == (2 * product + 255) // 510).all()  # c * a / 255, rounded half up


def test_grey_with_alpha_and_a_palette_with_transparency_are_premultiplied_too() -> None:
    la = Image.fromarray(np.array([[[200, 128], [200, 255], [200, 0]]], np.uint8), "LA")
    assert decode_full_rgb(encoded(la))[0].tolist() == [[100] * 3, [200] * 3, [0] * 3]
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 40, 50, 60])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # index 0 fully transparent
    assert decode_full_rgb(encoded(palette))[0].tolist() == [[0, 0, 0], [40, 50, 60]]
    opaque = Image.new("P", (1, 1))
    opaque.putpalette([10, 20, 30])
    assert decode_full_rgb(encoded(opaque))[0].tolist() == [[10, 20, 30]]


def test_the_legacy_resize_aligns_corners_and_truncates() -> None:
    source = np.array([[[0, 0, 0], [255, 100, 9]]], np.uint8)  # 1 row, 2 columns
    wide = resize_align_corners(source, 3, 2)
    assert wide.shape == (2, 3, 3)
    # Column 1 samples the source at 0.5: 127.5, 50, 4.5, truncated; the corners are the source's.
    assert wide[0].tolist() == [[0, 0, 0], [127, 50, 4], [255, 100, 9]] and (wide[1] == wide[0]).all()
    assert resize_align_corners(source, 1, 1).tolist() == [[[0, 0, 0]]]  # the first pixel


def test_the_legacy_resize_of_a_wider_source_picks_its_corners() -> None:
    source = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    small = resize_align_corners(source, 2, 2)
    assert small.tolist() == [
        [source[0, 0].tolist(), source[0, 3].tolist()],
        [source[4, 0].tolist(), source[4, 3].tolist()],
    ]
    assert (resize_align_corners(source, 4, 5) == source).all()  # the same size: the same pixels


@pytest.mark.parametrize(("orientation", "size"), [(1, (4, 2)), (3, (4, 2)), (6, (2, 4)), (8, (2, 4))])
def test_exif_orientation_turns_the_picture_before_the_resize(
    orientation: int, size: tuple[int, int]
) -> None:
    pixels = np.zeros((2, 4, 3), np.uint8)
    pixels[0, 0] = (255, 0, 0)  # one red corner, to see where it goes
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, format="PNG", exif=exif)
    full = decode_full_rgb(out.getvalue())
    assert (full.shape[1], full.shape[0]) == size
    red = tuple(int(i) for i in np.argwhere(full[..., 0] == 255)[0])
    assert red == {1: (0, 0), 3: (1, 3), 6: (0, 1), 8: (3, 0)}[orientation]
    assert decode_rgb(out.getvalue(), *size).shape == (size[1], size[0], 3)
