"""Frame sources of `classifier publish`: a video file's frames as JPEG, or a folder of images, in order.

Videos are decoded by PyAV (the `video` extra: `pip install 'dapr-wasm-classifier[video]'`), chosen by
measurement (`python -m bench.decoders`, docs/streams.md): the smallest wheel of the three candidates, an
in-process library (its errors are exceptions, there is no ffmpeg process to manage), as fast as the others
for what a stream needs. Every frame is taken, in decoding order; the publisher decides the pace.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import ClassifierError, ErrorKind, invalid_argument, not_found

JPEG_QUALITY = 90
# What `--frames DIR` takes from a folder: the image formats the service decodes (service/imaging.py).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Source:
    """Frames to publish, and what the publisher needs to know of them before the first."""

    name: str  # the file or folder, for messages
    frames: Iterator[bytes]  # each frame's encoded image (JPEG for a video)
    rate: float | None  # the video's own frame rate (frames/s), if it says; None for a folder


def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise not_found(f"{what} {path}: no such file or directory")


def video_source(path: Path) -> Source:
    """The frames of the video at `path` as JPEG; a file PyAV cannot open, or one with no video stream,
    is an invalid-argument error before any frame."""
    try:
        import av
    except ImportError:
        raise ClassifierError(
            ErrorKind.INVALID_ARGUMENT,
            "--video needs PyAV: pip install 'dapr-wasm-classifier[video]' (or pip install av)",
        ) from None
    _check_exists(path, "--video")
    if path.is_dir():
        raise invalid_argument(f"--video {path}: is a directory; give a video file, or --frames DIR")
    try:
        container = av.open(str(path))
    except av.error.EOFError:  # a container that ends before its first packet
        raise invalid_argument(f"--video {path}: has no frames (it ends before the first)") from None
    except (av.FFmpegError, OSError) as exc:
        raise invalid_argument(f"--video {path}: not a video PyAV can decode ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise invalid_argument(f"--video {path}: has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # decode on every core: frame threads
    rate = float(stream.average_rate) if stream.average_rate else None

    def frames() -> Iterator[bytes]:
        count = 0
        try:
            for frame in container.decode(stream):
                out = io.BytesIO()
                frame.to_image().save(out, "JPEG", quality=JPEG_QUALITY)
                count += 1
                yield out.getvalue()
        except av.FFmpegError as exc:
            raise invalid_argument(f"--video {path}: frame {count}: cannot decode ({_reason(exc)})") from None
        finally:
            container.close()
        if count == 0:
            raise invalid_argument(f"--video {path}: has no frames")

    return Source(str(path), frames(), rate)


def folder_source(path: Path) -> Source:
    """The images in the folder at `path` (IMAGE_SUFFIXES, by name), their bytes as they are: the service
    decodes each one. A folder with none is an invalid-argument error."""
    _check_exists(path, "--frames")
    if not path.is_dir():
        raise invalid_argument(f"--frames {path}: not a directory; give a folder of images, or --video FILE")
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(path)
            if entry.is_file()
            and entry.name.lower().endswith(IMAGE_SUFFIXES)
            and not entry.name.startswith(".")
        )
    except PermissionError:
        raise invalid_argument(f"--frames {path}: permission denied") from None
    if not names:
        raise invalid_argument(f"--frames {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")

    def frames() -> Iterator[bytes]:
        for name in names:
            try:
                yield (path / name).read_bytes()
            except OSError as exc:
                raise invalid_argument(f"--frames {path}: {name}: {exc.strerror or exc}") from None

    return Source(str(path), frames(), None)


def frame_size(jpeg: bytes) -> tuple[int, int]:
    """(width, height) of an encoded frame (for messages and tests)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        return image.size


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip() or type(exc).__name__
