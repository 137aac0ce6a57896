"""Which video decoder `classifier publish --video` uses: the candidates measured on one clip, in one run.

    python -m bench.decoders [--frames 300] [--size 640x480]

Makes an H.264 clip of ../shared/images (PyAV encodes it), then times each installed decoder turning it into
JPEG frames as the publisher does (decode to RGB, Pillow JPEG at quality 90), and decode alone, best of three.
Candidates that are not installed are listed as such: PyAV (`av`, the product's decoder),
opencv-python-headless (`cv2`) and imageio-ffmpeg (an ffmpeg executable piping raw
frames). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "images" / "classify"


def make_clip(path: Path, frames: int, width: int, height: int, rate: int = 30) -> None:
    """An H.264 video of `frames` frames cycling through ../shared/images/classify/*.jpg (tests use it)."""
    import av

    pictures = [
        np.asarray(Image.open(p).convert("RGB").resize((width, height))) for p in sorted(IMAGES.glob("*.jpg"))
    ]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(pictures[index % len(pictures)], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def pyav_frames(path: Path) -> Iterator[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        container.streams.video[0].thread_type = "AUTO"  # frame threads, as the publisher decodes
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def opencv_frames(path: Path) -> Iterator[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            yield bgr[:, :, ::-1]
    finally:
        capture.release()


def imageio_ffmpeg_frames(path: Path) -> Iterator[np.ndarray]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    for raw in reader:
        yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)


CANDIDATES: dict[str, tuple[str, str, Callable[[Path], Iterator[np.ndarray]]]] = {
    "PyAV": ("av", "av", pyav_frames),
    "opencv-python-headless": ("cv2", "opencv-python-headless", opencv_frames),
    "imageio-ffmpeg": ("imageio_ffmpeg", "imageio-ffmpeg", imageio_ffmpeg_frames),
}


def jpeg(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, "JPEG", quality=90)
    return out.getvalue()


def timed(decode: Callable[[Path], Iterator[np.ndarray]], clip: Path, encode: bool) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(3):
        started = time.perf_counter()
        count = 0
        for rgb in decode(clip):
            if encode:
                jpeg(rgb)
            count += 1
        best = min(best, time.perf_counter() - started)
    return best, count


def import_seconds(module: str) -> float:
    """A fresh interpreter's import time (what `classifier publish --video` pays at start)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def installed_mb(distribution: str) -> float:
    files = importlib.metadata.distribution(distribution).files or []
    return sum(f.locate().stat().st_size for f in files if Path(f.locate()).is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", default="640x480")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as workdir:
        clip = Path(workdir) / "clip.mp4"
        make_clip(clip, args.frames, width, height)
        print(f"{args.frames} frames of H.264 {width}x{height}, best of 3, one process\n")
        print("| decoder | version | installed MB | import s | decode frames/s | decode + JPEG frames/s |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for name, (module, distribution, decode) in CANDIDATES.items():
            try:
                version = importlib.metadata.version(distribution)
                __import__(module)
            except (ImportError, importlib.metadata.PackageNotFoundError):
                print(f"| {name} | not installed | | | | |")
                continue
            decode_s, count = timed(decode, clip, encode=False)
            both_s, _ = timed(decode, clip, encode=True)
            assert count == args.frames, f"{name} decoded {count} of {args.frames} frames"
            print(
                f"| {name} | {version} | {installed_mb(distribution):.0f} | {import_seconds(module):.2f} "
                f"| {count / decode_s:.0f} | {count / both_s:.0f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
