"""Streams of frames through the real daprd and Redis: frames/s and latency from capture, bulk on and off,
beside native LiteRT on the same frames; and the frame rate at which latency starts to grow.

    python -m bench.streams           # ~6 min: a markdown table on stdout, bench/out/streams.json
    python -m bench.streams --smoke   # CI: two short runs per mode; checks it works, judges nothing

One Redis, one daprd + `classifier serve` (the project's components, tests/real_dapr.py's harness, the
default workers) with the birds model, and a camera daprd of another app id. The frames are a video made of
../shared/images/classify JPEGs (640x480 H.264), decoded and published as `classifier publish --video`
does (service/streams: PyAV, the same pacing and in-flight bound). Results are read back from Redis.

  sweep    for each --fps in FPS, DURATION_S of frames: p50/p99 of `capture_latency_ms` (in the results:
           from the frame's capture to its result's publication) and frames/s classified
  burst    FRAMES frames published at once (--fps 0): frames/s sustained = frames / (last result - first
           capture), with the latency the backlog adds
  native   the same decoded frames through LiteRT in this process (decode_rgb + invoke): one interpreter
           (per-frame p50/p99, frames/s), and one per core in threads (frames/s): the floor

"Latency grows from" is the lowest swept rate whose p50 exceeds twice the p50 at the lowest rate, or
whose classified rate falls below 90% of the published one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from dapr.clients import DaprClient

from service.imaging import decode_rgb
from service.inference.litert import new_interpreter
from service.stores.dapr import DaprStore
from service.streams.publisher import PublishSummary, StreamOptions, publish_stream
from service.streams.video import video_source

from .decoders import make_clip

ROOT = Path(__file__).resolve().parents[1]
BIRDS = ROOT.parent / "shared" / "models" / "aiy_birds_v1"
FPS = (5, 10, 20, 30, 40, 60)
DURATION_S = 10.0
FRAMES = 300
CLIP_FRAMES = 600  # the clip is reused for every case (at 60/s for 10 s: 600 frames)


def _harness() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import real_dapr

    return real_dapr


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def stream_results(redis: Any, stream_id: str) -> list[dict[str, Any]]:
    found = []
    for _, fields in redis.xrange("classifications"):
        data = json.loads(fields[b"data"]).get("data")
        if isinstance(data, dict) and data.get("stream_id") == stream_id:
            found.append(data)
    return found


def run_case(client: Any, redis: Any, harness: Any, clip: Path, fps: float, frames: int) -> dict[str, Any]:
    """Publish `frames` frames of the clip at `fps` (0: at once) as one new stream; wait for every result."""
    stream_id = f"bench-{uuid.uuid4().hex[:8]}"
    options = StreamOptions(stream_id=stream_id, fps=fps, max_frames=frames, model="birds", top_k=1)

    def publish(seq: int, event: bytes) -> None:
        client.publish_event(
            "pubsub",
            "images",
            event,
            data_content_type="application/json",
            publish_metadata={"cloudevent.id": f"{stream_id}:{seq}"},
        )

    summary = PublishSummary()
    publish_stream(video_source(clip).frames, publish, options, summary)
    got: list[dict[str, Any]] = []

    def all_in() -> bool:
        got[:] = stream_results(redis, stream_id)
        return len({r["seq"] for r in got}) >= summary.published

    # Results without stream fields (a service before streams) never match: this fails rather than hangs.
    try:
        harness.wait_for(all_in, 60 + frames, f"every result of {stream_id}", interval=0.5)
    except AssertionError:  # recorded, and the run goes on: a stall is a finding, not a crash
        stalled = True
    else:
        stalled = False
    latencies = [r["capture_latency_ms"] for r in got if "capture_latency_ms" in r]
    if not got:
        return {"fps": fps, "frames": summary.published, "results": 0, "stalled": True}
    first_capture = min(r["captured_at"] for r in got)
    last_result = max(r["captured_at"] + r["capture_latency_ms"] / 1000 for r in got)
    return {
        "fps": fps,
        "frames": summary.published,
        "publish_failed": summary.failed,
        "published_per_s": round(summary.rate, 1),
        "classified_per_s": round(len(got) / (last_result - first_capture), 1),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "errors": sum(1 for r in got if "error" in r),
        "duplicates": len(got) - len({r["seq"] for r in got}),
        "results": len({r["seq"] for r in got}),
        "stalled": stalled,  # not every result within 60 s + 1 s per frame
    }


def growth_rate(sweep: list[dict[str, Any]]) -> float | None:
    if not sweep:
        return None
    base = sweep[0].get("p50_ms", 0.0)
    for case in sweep[1:]:
        if (
            case["stalled"]
            or case["p50_ms"] > 2 * base
            or case["classified_per_s"] < 0.9 * case["published_per_s"]
        ):
            return float(case["fps"])
    return None


def through_dapr(
    bulk: str, work: Path, clip: Path, rates: tuple[float, ...], duration_s: float, burst: int
) -> dict:
    harness = _harness()
    out: dict[str, Any] = {"bulk": bulk}
    with harness.stack(work, CLASSIFIER_BULK_SUBSCRIBE=bulk) as s:
        camera = s.add_sidecar("camera")
        with harness.sidecar_env(camera), DaprClient() as client:
            labels = (BIRDS / "labels.txt").read_text().splitlines()
            DaprStore(client, work / "uploader").put("birds", (BIRDS / "model.tflite").read_bytes(), labels)
            s.app.wait_ready()
            redis = s.redis.client()
            run_case(client, redis, harness, clip, 0, 10)  # warm: interpreters, connections
            out["sweep"] = []
            for fps in rates:
                out["sweep"].append(run_case(client, redis, harness, clip, fps, int(fps * duration_s)))
                print(f"bulk {bulk}: {json.dumps(out['sweep'][-1])}", flush=True)
                if out["sweep"][-1]["stalled"]:
                    break  # its backlog would be the next case's latency
            out["burst"] = run_case(client, redis, harness, clip, 0, burst)
            print(f"bulk {bulk}: {json.dumps(out['burst'])}", flush=True)
        out["latency_grows_from_fps"] = growth_rate(out["sweep"])
    return out


def native(clip: Path, frames: int) -> dict[str, Any]:
    images = [jpeg for _, jpeg in zip(range(frames), video_source(clip).frames, strict=False)]
    model = (BIRDS / "model.tflite").read_bytes()

    def classifier() -> Any:
        interpreter = new_interpreter(model, 1)
        detail = interpreter.get_input_details()[0]
        height, width = int(detail["shape"][1]), int(detail["shape"][2])
        output = interpreter.get_output_details()[0]["index"]

        def classify(image: bytes) -> int:
            interpreter.set_tensor(detail["index"], decode_rgb(image, width, height)[None])
            interpreter.invoke()
            return int(np.argmax(interpreter.get_tensor(output)[0]))

        return classify

    one = classifier()
    one(images[0])
    per_frame = []
    started = time.perf_counter()
    for image in images:
        t = time.perf_counter()
        one(image)
        per_frame.append((time.perf_counter() - t) * 1000)
    sequential_s = time.perf_counter() - started

    cores = os.cpu_count() or 2
    local = threading.local()

    def threaded(image: bytes) -> int:
        if not hasattr(local, "classify"):
            local.classify = classifier()
        return int(local.classify(image))

    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(threaded, images[:cores]))  # an interpreter per thread, warm
        started = time.perf_counter()
        list(pool.map(threaded, images))
        threads_s = time.perf_counter() - started
    return {
        "frames": len(images),
        "p50_ms": round(statistics.median(per_frame), 1),
        "p99_ms": round(percentile(per_frame, 99), 1),
        "per_s": round(len(images) / sequential_s, 1),
        "threads": cores,
        "threads_per_s": round(len(images) / threads_s, 1),
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['cores']} cores, load {report['load_at_start']:.1f} at start; birds on 640x480 H.264 "
        "frames; latency from capture to the result's publication",
        "",
        "| case | bulk | fps asked | frames | published/s | classified/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in report["dapr"]:
        for case in [*mode["sweep"], mode["burst"]]:
            name = "burst" if case["fps"] == 0 else "sweep"
            asked = "all at once" if case["fps"] == 0 else f"{case['fps']:g}"
            if case.get("stalled"):
                lines.append(
                    f"| {name} | {mode['bulk']} | {asked} | {case['frames']} | | stalled: "
                    f"{case['results']} results of {case['frames']} | | | |"
                )
                continue
            lines.append(
                f"| {name} | {mode['bulk']} | {asked} | {case['frames']} | {case['published_per_s']} "
                f"| {case['classified_per_s']} | {case['p50_ms']} | {case['p99_ms']} | {case['errors']} |"
            )
    n = report["native"]
    lines.append(
        f"| native LiteRT, 1 interpreter | | | {n['frames']} | | {n['per_s']} | {n['p50_ms']} "
        f"| {n['p99_ms']} | |"
    )
    lines.append(
        f"| native LiteRT, {n['threads']} threads | | | {n['frames']} | | {n['threads_per_s']} | | | |"
    )
    lines.append("")
    for mode in report["dapr"]:
        grows = mode["latency_grows_from_fps"]
        where = (
            f"{grows:g} frames/s"
            if grows
            else f"none of the rates swept (up to {mode['sweep'][-1]['fps']:g}/s)"
        )
        lines.append(f"bulk {mode['bulk']}: latency grows from {where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="two short runs per mode: checks it works")
    parser.add_argument("--bulk", choices=("on", "off", "both"), default="both")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    rates, duration_s, burst = (
        ((5.0, 20.0), 1.0, 10) if args.smoke else (tuple(map(float, FPS)), DURATION_S, FRAMES)
    )
    report: dict[str, Any] = {
        "smoke": args.smoke,
        "cores": os.cpu_count(),
        "load_at_start": os.getloadavg()[0],
    }
    # The stacks' logs (daprd, serve, Redis) stay in OUT/streams-work until the next run.
    work = args.out / "streams-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    clip = work / "frames.mp4"
    make_clip(clip, 30 if args.smoke else CLIP_FRAMES, 640, 480)
    report["native"] = native(clip, 30 if args.smoke else FRAMES)
    modes = ("off", "on") if args.bulk == "both" else (args.bulk,)
    report["dapr"] = [through_dapr(m, work / f"bulk-{m}", clip, rates, duration_s, burst) for m in modes]
    (args.out / "streams.json").write_text(json.dumps(report, indent=2))
    print(("smoke run (judges nothing)\n" if args.smoke else "") + table(report))
    lost = [
        m["bulk"]
        for m in report["dapr"]
        for c in [*m["sweep"], m["burst"]]
        if c.get("errors") or c.get("publish_failed") or c["stalled"]
    ]
    if lost:
        print(f"frames failed or results stalled with bulk {sorted(set(lost))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
