"""The `wasmedge_image` host module on every file in ../shared/images/formats and odd,
called from a real guest (wasm/testguests/image_probe.c) that dumps what it received."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, run_guest
from PIL import Image

from service.imaging import decode_rgb
from service.wasm.host import GuestResult, WasmHost

FORMATS = sorted(p for p in (IMAGES / "formats").iterdir() if p.is_file())
ODD = sorted(p for p in (IMAGES / "odd").iterdir() if p.is_file())
LARGE = sorted((IMAGES / "odd" / "large").iterdir())
UNDECODABLE = {"corrupt-header.jpg", "truncated.jpg", "truncated_jpeg.jpg"}
RGB8, BGR8, RGB32F, BGR32F = range(4)


def probe(host: WasmHost, guests: dict[str, Path], image: bytes, *args: str) -> GuestResult:
    return run_guest(host, guests["image_probe"], *args, stdin=image)


def fields(result: GuestResult) -> dict[str, str]:
    assert result.exit_code == 0, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.decode().splitlines())


def load(
    host: WasmHost, guests: dict[str, Path], path: Path, w: int, h: int, out_type: int = RGB8
) -> np.ndarray:
    """The pixels the guest received from `load_image`, as (h, w, 3)."""
    out = fields(probe(host, guests, path.read_bytes(), "load_image", str(w), str(h), str(out_type), "dump"))
    assert out["errno"] == "0", path.name
    data = bytes.fromhex(out["bytes"])
    if out_type in (RGB32F, BGR32F):
        return np.frombuffer(data, "<f4").reshape(h, w, 3)
    return np.frombuffer(data, np.uint8).reshape(h, w, 3)


@pytest.mark.parametrize("path", FORMATS + ODD, ids=lambda p: p.name)
def test_every_shared_image_decodes_or_fails_cleanly(host, test_guests, path: Path) -> None:
    out = fields(probe(host, test_guests, path.read_bytes(), "load_image", "24", "16", str(RGB8), "dump"))
    if path.name in UNDECODABLE:
        assert out["errno"] == "1"
        return
    assert out["errno"] == "0"
    pixels = np.frombuffer(bytes.fromhex(out["bytes"]), np.uint8).reshape(16, 24, 3)
    assert np.array_equal(pixels, decode_rgb(path.read_bytes(), 24, 16))  # the host's decode, byte for byte
    assert pixels.std() > 0 or path.name in {
        "orientation_rectangle.jpg"
    }  # a real picture, not a blank buffer


@pytest.mark.parametrize("path", LARGE, ids=lambda p: p.name)
def test_decompression_bombs_fail_from_the_header(host, test_guests, path: Path) -> None:
    result = probe(host, test_guests, path.read_bytes(), "load_image", "224", "224", str(RGB8))
    assert fields(result)["errno"] == "1"
    assert any("pixels" in note and "limit" in note for note in result.call.notes), result.call.notes
    # The host serves the next call normally.
    hopper = (IMAGES / "formats" / "hopper.png").read_bytes()
    assert fields(probe(host, test_guests, hopper, "load_image", "8", "8", "0"))["errno"] == "0"


def test_same_picture_in_every_format_gives_the_same_pixels(host, test_guests) -> None:
    reference = load(host, test_guests, IMAGES / "formats" / "hopper.png", 32, 32).astype(int)
    for name in ["hopper.bmp", "hopper.gif", "hopper.jpg", "hopper.webp"]:
        pixels = load(host, test_guests, IMAGES / "formats" / name, 32, 32).astype(int)
        assert np.abs(pixels - reference).mean() < 6, name  # lossy formats differ a little


@pytest.mark.parametrize("name", ["hopper_orientation_3.jpg", "hopper_orientation_6.jpg"])
def test_exif_orientation_is_applied(host, test_guests, name: str) -> None:
    upright = load(host, test_guests, IMAGES / "formats" / "hopper.jpg", 32, 32).astype(int)
    rotated_file = IMAGES / "odd" / name
    pixels = load(host, test_guests, rotated_file, 32, 32).astype(int)
    assert np.abs(pixels - upright).mean() < 8
    as_stored = np.asarray(Image.open(rotated_file).convert("RGB").resize((32, 32))).astype(int)
    assert np.abs(as_stored - upright).mean() > 30  # the file's pixels really are rotated


def test_sixteen_bit_png_keeps_its_colours(host, test_guests) -> None:
    flag = load(host, test_guests, IMAGES / "formats" / "Flag_of_the_Netherlands-16bit.png", 30, 30)
    red, white, blue = flag[2, 15], flag[15, 15], flag[27, 15]
    assert red[0] > 150 and red[1] < 60 and red[2] < 60
    assert white.min() > 240
    assert blue[2] > 120 and blue[0] < 60


@pytest.mark.parametrize("name", ["hopper_gray.jpg", "concert.jpg"])
def test_grey_images_become_grey_rgb(host, test_guests, name: str) -> None:
    pixels = load(host, test_guests, IMAGES / "odd" / name, 16, 16)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])


def test_cmyk_is_converted_not_inverted(host, test_guests) -> None:
    cmyk = load(host, test_guests, IMAGES / "odd" / "Channel_digital_image_CMYK_color_no_profile.jpg", 32, 32)
    cmyk = cmyk.astype(int)
    with Image.open(IMAGES / "odd" / "Channel_digital_image_CMYK_color_no_profile.jpg") as image:
        reference = np.asarray(image.convert("RGB").resize((32, 32))).astype(int)
    # Draft-mode decoding differs a little from a full decode; an inverted conversion a lot.
    assert np.abs(cmyk - reference).mean() < 0.3 * np.abs(cmyk - (255 - reference)).mean()


def test_animated_gif_gives_its_first_frame(host, test_guests) -> None:
    path = IMAGES / "formats" / "animated-loop-3.gif"
    with Image.open(path) as gif:
        assert gif.n_frames > 1
        first = np.asarray(gif.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(load(host, test_guests, path, 16, 16).astype(int) - first).mean() < 2


def test_output_types_share_one_decode(host, test_guests) -> None:
    path = IMAGES / "formats" / "hopper.png"
    rgb = load(host, test_guests, path, 8, 8, RGB8)
    assert np.array_equal(load(host, test_guests, path, 8, 8, BGR8), rgb[..., ::-1])
    assert np.allclose(load(host, test_guests, path, 8, 8, RGB32F), rgb / 255.0, atol=1e-6)
    assert np.allclose(load(host, test_guests, path, 8, 8, BGR32F), rgb[..., ::-1] / 255.0, atol=1e-6)


def test_format_specific_loaders_refuse_other_formats(host, test_guests) -> None:
    png = (IMAGES / "formats" / "hopper.png").read_bytes()
    jpg = (IMAGES / "formats" / "hopper.jpg").read_bytes()
    assert fields(probe(host, test_guests, png, "load_png", "8", "8", "0"))["errno"] == "0"
    assert fields(probe(host, test_guests, jpg, "load_jpg", "8", "8", "0"))["errno"] == "0"
    assert fields(probe(host, test_guests, png, "load_jpg", "8", "8", "0"))["errno"] == "1"
    assert fields(probe(host, test_guests, jpg, "load_png", "8", "8", "0"))["errno"] == "1"


@pytest.mark.parametrize(
    ("args", "note"),
    [
        (("8", "8", "0", "191"), "output buffer has 191 bytes"),  # 8x8 RGB8 needs 192
        (("8", "8", "7"), "unknown output type"),
        (("0", "8", "0"), "out of range"),
        (("8", "8", "0", "bad-out"), "outside guest memory"),
        (("8", "8", "0", "bad-in"), "outside guest memory"),
    ],
)
def test_bad_arguments_get_errno_1_and_a_reason(host, test_guests, args: tuple[str, ...], note: str) -> None:
    result = probe(host, test_guests, (IMAGES / "formats" / "hopper.png").read_bytes(), "load_image", *args)
    assert fields(result)["errno"] == "1"
    assert any(note in n for n in result.call.notes), result.call.notes
