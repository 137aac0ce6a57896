"""Which JPEG decoder `service/imaging.py` `decode_rgb` could use: the candidates measured on the shared
JPEGs, in one run, with the answers they lead to.

    python -m bench.imagedecode [--rounds 200]
    python -m bench.imagedecode --smoke   # a few rounds (CI): checks the benchmark works, measures nothing

Every candidate decodes to the models' input size (224x224: aiy_birds_v1 and mobilenet_v2_1.0_224_quant),
honouring EXIF orientation, from ../shared/images/classify/*.jpg and the EXIF-oriented JPEGs of
../shared/images/odd. The candidates (those not installed are listed as such):
  Pillow (service)     `decode_rgb`: draft mode (libjpeg's DCT scaling by 1/2, 1/4 or 1/8), bilinear resize
  Pillow + reduce      the same, then `Image.reduce` by the whole factor left on each axis, then bilinear
  OpenCV linear/area   `cv2.imdecode` with IMREAD_REDUCED_COLOR_2/4/8 chosen as draft chooses, `cv2.resize`
                       INTER_LINEAR or INTER_AREA (one OpenCV thread, as a request's worker has)
  simplejpeg           `decode_jpeg` with min_width/min_height (libjpeg-turbo's n/8 DCT scaling), then
                       Pillow bilinear
  PyTurboJPEG          `decode` with the smallest scaling factor that keeps the target size, Pillow bilinear
                       (needs Debian's libturbojpeg0; PyTurboJPEG 1.x for its libjpeg-turbo 2.1)
The alternatives read the header with Pillow (size, orientation), as the service must anyway to check the
pixel limit before decoding; simplejpeg and PyTurboJPEG do not orient, so the bench orients their pixels.

Timing: each round times every candidate once on every image, the candidates' order rotating per round;
the medians of wall time and of the thread's CPU time (time.thread_time) per decode, as ratios to the
service's path. Answers: each candidate's pixels through the real LiteRT interpreter of both models, top-1
against ../shared/expected.json (or, where it has no case, against the service's path), and the max / mean
absolute pixel difference to the service's path. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.run import SHARED, WORKLOADS
from service.imaging import decode_rgb
from service.inference.litert import new_interpreter

Decode = Callable[[bytes, int, int], np.ndarray]

IMAGES = sorted((SHARED / "images" / "classify").glob("*.jpg"))
ORIENTED = sorted(
    path
    for path in (SHARED / "images" / "odd").glob("*.jpg")
    if path.name.startswith(("hopper_orientation", "orientation"))
)
TRANSPOSED = {5, 6, 7, 8}


@dataclass(frozen=True)
class Header:
    width: int  # as stored, before orientation
    height: int
    orientation: int


def header(data: bytes) -> Header:
    image = Image.open(io.BytesIO(data))
    return Header(image.width, image.height, image.getexif().get(0x0112, 1))


def stored_target(head: Header, width: int, height: int) -> tuple[int, int]:
    """The output size in the stored image's frame (turned when the orientation swaps the axes)."""
    return (height, width) if head.orientation in TRANSPOSED else (width, height)


def draft_scale(head: Header, width: int, height: int) -> int:
    """The DCT scale Pillow's draft picks: the largest of 8, 4, 2, 1 within both whole ratios."""
    target_w, target_h = stored_target(head, width, height)
    ratio = min(head.width // target_w, head.height // target_h)
    return next((scale for scale in (8, 4, 2) if ratio >= scale), 1)


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation on (H, W, 3) pixels, as ImageOps.exif_transpose turns an image."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return np.ascontiguousarray(turned(pixels)) if turned else pixels


def pillow_bilinear(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    image = Image.fromarray(pixels)
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def pillow_reduce(data: bytes, width: int, height: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    orientation = image.getexif().get(0x0112, 1)
    image.draft("RGB", stored_target(Header(image.width, image.height, orientation), width, height))
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    factors = (max(1, image.width // width), max(1, image.height // height))
    if factors != (1, 1):
        image = image.reduce(factors)  # box average by whole factors: the bilinear pass gets less to read
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def pillow_unoriented(data: bytes, width: int, height: int) -> np.ndarray:
    """The control: the service's path without EXIF orientation, which the orientation check must catch."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (width, height))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def opencv(interpolation_name: str) -> Decode:
    import cv2

    cv2.setNumThreads(1)  # a request's worker thread decodes alone; thread CPU time then counts it all
    reduced = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
    reduced[8] = cv2.IMREAD_REDUCED_COLOR_8
    interpolation = getattr(cv2, interpolation_name)

    def decode(data: bytes, width: int, height: int) -> np.ndarray:
        scale = draft_scale(header(data), width, height)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), reduced[scale])  # applies EXIF orientation
        resized = cv2.resize(bgr, (width, height), interpolation=interpolation)
        return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)

    return decode


def simplejpeg_decoder() -> Decode:
    import simplejpeg

    def decode(data: bytes, width: int, height: int) -> np.ndarray:
        head = header(data)
        target_w, target_h = stored_target(head, width, height)
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=target_h, min_width=target_w)
        return orient(pillow_bilinear(pixels, target_w, target_h), head.orientation)

    return decode


def turbojpeg_decoder() -> Decode:
    import turbojpeg

    jpeg = turbojpeg.TurboJPEG()  # RuntimeError or OSError without Debian's libturbojpeg0
    factors = sorted((f for f in jpeg.scaling_factors if f[0] <= f[1]), key=lambda f: f[0] / f[1])

    def decode(data: bytes, width: int, height: int) -> np.ndarray:
        head = header(data)
        target_w, target_h = stored_target(head, width, height)
        factor = next(
            (
                (n, d)
                for n, d in factors
                if -(-head.width * n // d) >= target_w and -(-head.height * n // d) >= target_h
            ),
            (1, 1),
        )
        pixels = jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=factor)
        return orient(pillow_bilinear(pixels, target_w, target_h), head.orientation)

    return decode


CONTROL = "control: Pillow, EXIF ignored"


@dataclass(frozen=True)
class Candidate:
    name: str
    distribution: str
    load: Callable[[], Decode]


CANDIDATES = (
    Candidate("Pillow (service)", "pillow", lambda: decode_rgb),
    Candidate("Pillow + reduce", "pillow", lambda: pillow_reduce),
    Candidate("OpenCV linear", "opencv-python-headless", lambda: opencv("INTER_LINEAR")),
    Candidate("OpenCV area", "opencv-python-headless", lambda: opencv("INTER_AREA")),
    Candidate("simplejpeg", "simplejpeg", simplejpeg_decoder),
    Candidate("PyTurboJPEG", "PyTurboJPEG", turbojpeg_decoder),
    Candidate(CONTROL, "pillow", lambda: pillow_unoriented),
)
SERVICE = CANDIDATES[0].name


def load_candidates() -> tuple[dict[str, Decode], dict[str, str]]:
    """The decoders that load here, and why each other one does not."""
    loaded: dict[str, Decode] = {}
    missing: dict[str, str] = {}
    for candidate in CANDIDATES:
        try:
            loaded[candidate.name] = candidate.load()
        except (ImportError, RuntimeError, OSError) as exc:
            missing[candidate.name] = f"not installed ({str(exc).splitlines()[0]})"
    return loaded, missing


def timings(
    decoders: dict[str, Decode], images: dict[str, bytes], size: tuple[int, int], rounds: int
) -> dict[tuple[str, str], tuple[float, float]]:
    """(candidate, image) -> median (wall s, thread CPU s) per decode, candidates interleaved."""
    names = list(decoders)
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            decode = decoders[name]
            for image, data in images.items():
                cpu_started, wall_started = time.thread_time(), time.perf_counter()
                decode(data, *size)
                wall_s, cpu_s = time.perf_counter() - wall_started, time.thread_time() - cpu_started
                wall.setdefault((name, image), []).append(wall_s)
                cpu.setdefault((name, image), []).append(cpu_s)
    return {key: (statistics.median(wall[key]), statistics.median(cpu[key])) for key in wall}


class Model:
    """One workload's model on a real LiteRT interpreter: top-1 of given pixels."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.interpreter = new_interpreter(path.read_bytes(), 1)
        detail = self.interpreter.get_input_details()[0]
        self.input_index = detail["index"]
        self.height, self.width = int(detail["shape"][1]), int(detail["shape"][2])
        self.output_index = self.interpreter.get_output_details()[0]["index"]

    def top1(self, pixels: np.ndarray) -> int:
        self.interpreter.set_tensor(self.input_index, pixels[None])
        self.interpreter.invoke()
        return int(np.argmax(self.interpreter.get_tensor(self.output_index)[0]))


def ground_truth() -> dict[tuple[str, str], int]:
    cases = json.loads((SHARED / "expected.json").read_text())["cases"]
    return {(case["model"], Path(case["image"]).name): int(case["top1_index"]) for case in cases}


@dataclass
class Answers:
    truth_right: int = 0
    truth_cases: int = 0
    service_same: int = 0  # top-1 equal to the service path's where expected.json has no case
    service_cases: int = 0
    wrong: list[str] = field(default_factory=list)  # "model image: top-1" where it differs
    max_diff: int = 0
    mean_diffs: list[float] = field(default_factory=list)
    oriented_right: int = 0
    oriented_cases: int = 0


def answers(decoders: dict[str, Decode], images: dict[str, bytes], models: list[Model]) -> dict[str, Answers]:
    truth = ground_truth()
    found: dict[str, Answers] = {name: Answers() for name in decoders}
    for model in models:
        size = (model.width, model.height)
        for image, data in images.items():
            reference = decode_rgb(data, *size)
            reference_top1 = model.top1(reference)
            unoriented = pillow_unoriented(data, *size)
            # Orientation the pixels show (not a uniform image): the check can tell it was applied.
            visible = float(np.abs(reference.astype(np.int16) - unoriented.astype(np.int16)).mean()) > 1
            for name, decode in decoders.items():
                pixels = decode(data, *size)
                result = found[name]
                assert pixels.shape == (model.height, model.width, 3), f"{name} gave {pixels.shape}"
                top1 = model.top1(pixels)
                expected = truth.get((model.name, image))
                if expected is not None:
                    result.truth_cases += 1
                    result.truth_right += top1 == expected
                else:
                    result.service_cases += 1
                    result.service_same += top1 == reference_top1
                if top1 != (reference_top1 if expected is None else expected):
                    result.wrong.append(f"{model.name} {image}: {top1}")
                diff = np.abs(pixels.astype(np.int16) - reference.astype(np.int16))
                result.max_diff = max(result.max_diff, int(diff.max()))
                result.mean_diffs.append(float(diff.mean()))
                if visible and model is models[0]:
                    # Honoured: nearer the oriented image than the same pixels not turned.
                    unturned = np.abs(pixels.astype(np.int16) - unoriented.astype(np.int16)).mean()
                    result.oriented_cases += 1
                    result.oriented_right += float(diff.mean()) < float(unturned)
    return found


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=200, help="timed decodes of each image per candidate")
    parser.add_argument("--smoke", action="store_true", help="3 rounds: checks the benchmark works")
    args = parser.parse_args(argv)
    rounds = 3 if args.smoke else args.rounds

    decoders, missing = load_candidates()
    images = {path.name: path.read_bytes() for path in [*IMAGES, *ORIENTED]}
    models = [Model(workload.name, workload.model) for workload in WORKLOADS]
    sizes = {(model.width, model.height) for model in models}
    assert len(sizes) == 1, f"the models' input sizes differ: {sizes}"
    size = sizes.pop()
    workload_images = [workload.image.name for workload in WORKLOADS]

    found = answers(decoders, images, models)
    timings(decoders, images, size, 1)  # warm-up: first calls load code and fill caches
    measured = timings(decoders, images, size, rounds)

    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"{len(images)} JPEGs to {size[0]}x{size[1]}, {rounds} rounds, median per decode, "
        f"one process; load average {load}\n"
    )
    print(
        "| candidate | version | CPU ms: "
        + " / ".join(workload_images)
        + " | CPU vs service: "
        + " / ".join(workload_images)
        + " / geomean all | wall vs service (geomean all) | top-1: expected.json / same as service "
        "| pixels vs service: max / mean abs diff | EXIF orientation |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- | ---: | --- |")
    for candidate in CANDIDATES:
        name = candidate.name
        if name in missing:
            print(f"| {name} | {missing[name]} | | | | | | |")
            continue
        result = found[name]
        cpu_ms = [measured[(name, image)][1] * 1e3 for image in workload_images]
        cpu_ratio = [measured[(name, image)][1] / measured[(SERVICE, image)][1] for image in images]
        wall_ratio = [measured[(name, image)][0] / measured[(SERVICE, image)][0] for image in images]
        ratio = [measured[(name, image)][1] / measured[(SERVICE, image)][1] for image in workload_images]
        ignored = result.oriented_cases - result.oriented_right
        orientation = f"WRONG: ignored on {ignored} of {result.oriented_cases}" if ignored else "honoured"
        wrong = f" (wrong: {'; '.join(result.wrong)})" if result.wrong else ""
        print(
            f"| {name} | {version(candidate.distribution)} | {' / '.join(f'{v:.2f}' for v in cpu_ms)} "
            f"| {' / '.join(f'{v:.2f}' for v in ratio)} / {statistics.geometric_mean(cpu_ratio):.2f} "
            f"| {statistics.geometric_mean(wall_ratio):.2f} "
            f"| {result.truth_right}/{result.truth_cases} / {result.service_same}/{result.service_cases}"
            f"{wrong} | {result.max_diff} / {statistics.fmean(result.mean_diffs):.2f} | {orientation} |"
        )

    print("\nCPU ms per decode (thread time), each image:\n")
    names = [candidate.name for candidate in CANDIDATES if candidate.name in decoders]
    print("| image | size | " + " | ".join(names) + " |")
    print("| --- | --- |" + " ---: |" * len(names))
    for image, data in images.items():
        head = header(data)
        cells = " | ".join(f"{measured[(name, image)][1] * 1e3:.2f}" for name in names)
        turned = f", orientation {head.orientation}" if head.orientation != 1 else ""
        print(f"| {image} | {head.width}x{head.height}{turned} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
