"""`classifier publish --video/--frames` and `classifier results`: streams through the Dapr sidecar.

Both talk to the sidecar over gRPC with the Dapr Python SDK's DaprClient: publishes with `publish_event`,
and the results topic read with a streaming subscription (`DaprClient.subscribe`, daprd's
SubscribeTopicEventsAlpha1), so `results` needs no app port of its own. Its consumer group is the app id
of its sidecar (the `pubsub` component's default): two viewers on one app id share the results between
them, a new app id reads what the topic still holds from its beginning.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli import _call_error
from ..config import ServeSettings
from ..errors import ClassifierError, ErrorKind, invalid_argument
from .follow import Emitted, ReorderBuffer, Result, describe, result_text, stream_fields
from .publisher import PublishSummary, StreamOptions, publish_stream
from .video import Source, folder_source, video_source

STREAM_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
FOLDER_FPS = 10.0  # --frames DIR: a folder says no rate
VIDEO_FPS = 25.0  # a video that says no rate
PROGRESS_EVERY_S = 5.0  # when stderr is not a terminal


def check_stream_id(text: str) -> str:
    if not STREAM_ID.fullmatch(text):
        raise invalid_argument(f"--stream-id {text!r}: 1-128 characters of A-Z a-z 0-9 . _ : -")
    return text


def default_stream_id(source: Path) -> str:
    """The file's name and a random suffix: a new stream each run (seq starts at 0 again)."""
    stem = re.sub(r"[^A-Za-z0-9._:-]", "_", source.stem)[:100] or "stream"
    return f"{stem}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class PublishRequest:
    video: Path | None
    frames: Path | None
    fps: float | None
    stream_id: str | None
    max_frames: int | None
    max_inflight: int
    model: str | None
    top_k: int | None


def open_source(request: PublishRequest) -> Source:
    if request.video is not None:
        return video_source(request.video)
    assert request.frames is not None
    return folder_source(request.frames)


def publish_frames(client: Any, serve: ServeSettings, request: PublishRequest, source: Source) -> int:
    """Publish the source's frames as one stream; one summary line on stdout, the exit code returned."""
    path = request.video or request.frames
    assert path is not None
    fps = (
        request.fps
        if request.fps is not None
        else source.rate or (FOLDER_FPS if request.frames else VIDEO_FPS)
    )
    options = StreamOptions(
        stream_id=request.stream_id or default_stream_id(path),
        fps=fps,
        max_inflight=request.max_inflight,
        max_frames=request.max_frames,
        model=request.model,
        top_k=request.top_k,
    )

    def publish(seq: int, event: bytes) -> None:
        try:
            client.publish_event(
                serve.pubsub,
                serve.images_topic,
                event,
                data_content_type="application/json",
                publish_metadata={"cloudevent.id": f"{options.stream_id}:{seq}"},
            )
        except Exception as exc:  # the summary says each failure in one line, as `publish IMAGE` does
            raise RuntimeError(_call_error(exc)) from exc

    summary = PublishSummary()
    pace = f"at {fps:g} frames/s" if fps > 0 else "as fast as it goes"
    print(f"publishing {source.name} as stream {options.stream_id} {pace}", file=sys.stderr)
    outcome, code = "published", 0
    try:
        publish_stream(source.frames, publish, options, summary, _progress_printer())
    except KeyboardInterrupt:
        outcome, code = "interrupted after publishing", 130
    except ClassifierError as exc:  # a frame that cannot be decoded: what came before was published
        print(f"classifier: {exc.message}", file=sys.stderr)
        outcome, code = "stopped after publishing", 1
    if sys.stderr.isatty():
        print(file=sys.stderr)  # end the progress line
    for error in summary.errors:
        print(f"classifier: not published: {error}", file=sys.stderr)
    failed = f", {summary.failed} failed" if summary.failed else ""
    print(
        f"{outcome} {summary.published} frames of stream {options.stream_id} to "
        f"{serve.pubsub}/{serve.images_topic} in {summary.elapsed_s:.1f} s "
        f"({summary.rate:.1f} frames/s{failed})"
    )
    if summary.published == 0 and code == 0:
        code = 1
    return code or (1 if summary.failed else 0)


def _progress_printer() -> Callable[[PublishSummary, int], None]:
    interactive = sys.stderr.isatty()
    last = time.monotonic()

    def show(summary: PublishSummary, inflight: int) -> None:
        nonlocal last
        now = time.monotonic()
        if not interactive and now - last < PROGRESS_EVERY_S:
            return
        last = now
        line = f"published {summary.published} frames, {inflight} in flight"
        if summary.failed:
            line += f", {summary.failed} failed"
        print(
            f"\r{line}" if interactive else line, end="" if interactive else "\n", file=sys.stderr, flush=True
        )

    return show


@dataclass(frozen=True)
class FollowRequest:
    stream_id: str | None
    follow: bool
    idle_s: float
    count: int | None
    window: int
    wait_s: float
    as_json: bool


CLOSED = object()  # the subscription ended


def _read_messages(subscription: Any, out: queue.Queue[object]) -> None:
    """The reader thread: every message acknowledged (a viewer drops nothing for the others: its consumer
    group is its own), each JSON result put on `out`; then CLOSED, or the error that ended the stream."""
    from dapr.common.pubsub.subscription import StreamCancelledError, StreamInactiveError

    try:
        for message in subscription:
            try:
                data = json.loads(message.raw_data())
            except ValueError:
                data = None
            subscription.respond_success(message)
            if isinstance(data, dict):
                out.put(data)
        out.put(CLOSED)
    except (StreamInactiveError, StreamCancelledError):
        out.put(CLOSED)
    except Exception as exc:
        out.put(exc)


def subscribe_results(client: Any, serve: ServeSettings) -> tuple[Any, queue.Queue[object]]:
    """A streaming subscription to the results topic, read by a thread of its own: the queue gets each
    JSON result (a dict), then CLOSED or the exception that ended it. Close the subscription to stop."""
    import grpc

    try:
        subscription = client.subscribe(serve.pubsub, serve.results_topic)
    except Exception as exc:
        # The SDK raises a plain Exception with the RpcError's repr in it, the RpcError as its cause.
        cause = exc.__cause__ if isinstance(exc.__cause__, grpc.RpcError) else exc
        refused = isinstance(cause, grpc.RpcError) and cause.code() != grpc.StatusCode.UNAVAILABLE
        raise ClassifierError(  # refused (no such pub/sub): not a sidecar gone, no hint to look for it
            ErrorKind.INVALID_ARGUMENT if refused else ErrorKind.UNAVAILABLE,
            f"cannot subscribe to {serve.pubsub}/{serve.results_topic}: {_call_error(cause)}",
        ) from None
    # A message read as the viewer closes its stream cannot be acknowledged: the SDK warns so on
    # stderr (after the summary line). Nothing is lost: the consumer group gets it again.
    logging.getLogger("dapr.clients.grpc.subscription").setLevel(logging.ERROR)
    messages: queue.Queue[object] = queue.Queue()
    reader = threading.Thread(target=_read_messages, args=(subscription, messages), daemon=True)
    reader.start()
    return subscription, messages


def follow_results(client: Any, serve: ServeSettings, request: FollowRequest) -> int:
    buffer = ReorderBuffer(request.window, request.wait_s)
    printed = 0
    results_out = sys.stdout

    def emit(items: list[Emitted]) -> None:
        nonlocal printed
        for item in items:
            if request.count is not None and printed >= request.count:
                return  # --count N: the rest released at once is not printed
            if request.as_json:
                line = json.dumps(
                    item.result
                    if item.result is not None
                    else {"stream_id": item.stream_id, "skipped": list(item.skipped or ())}
                )
            else:
                line = describe(item)
            print(line, file=results_out, flush=True)
            printed += item.result is not None

    def emit_single(result: Result) -> None:
        nonlocal printed
        printed += 1
        if request.as_json:
            print(json.dumps(result), file=results_out, flush=True)
        else:
            print(f"{result.get('correlation_id', '?')}: {result_text(result)}", file=results_out, flush=True)

    subscription, messages = subscribe_results(client, serve)
    what = f"stream {request.stream_id}" if request.stream_id else "every stream"
    print(f"following {serve.pubsub}/{serve.results_topic} for {what}", file=sys.stderr)
    outcome, code = "", 0
    last_result = time.monotonic()
    # While it reconnects, the SDK prints its health probes on stdout, which is for results only.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            while request.count is None or printed < request.count:
                now = time.monotonic()
                waits = [d - now for d in (buffer.next_deadline(),) if d is not None]
                if not request.follow:
                    waits.append(last_result + request.idle_s - now)
                try:
                    item = messages.get(timeout=max(0.0, min(waits)) if waits else None)
                except queue.Empty:
                    item = None
                now = time.monotonic()
                if item is CLOSED:
                    outcome = "the subscription ended"
                    break
                if isinstance(item, Exception):
                    raise ClassifierError(
                        ErrorKind.UNAVAILABLE, f"the subscription to {serve.results_topic} failed: {item}"
                    )
                if isinstance(item, dict):
                    fields = stream_fields(item)
                    if request.stream_id is None or (fields is not None and fields[0] == request.stream_id):
                        last_result = now
                        if fields is None:
                            emit_single(item)
                        else:
                            emit(buffer.add(fields[0], fields[1], item, now))
                emit(buffer.poll(now))
                if not request.follow and now - last_result >= request.idle_s:
                    outcome = f"none for {request.idle_s:g} s"
                    break
            else:
                outcome = f"{request.count} printed"
        except KeyboardInterrupt:
            outcome, code = "interrupted", 130
        finally:
            subscription.close()
    if request.count is None or printed < request.count:
        emit(buffer.flush())
    counts = buffer.counts
    print(
        f"results: {printed} printed, {counts.skipped} skipped, {counts.duplicates} duplicates dropped "
        f"({outcome})",
        file=sys.stderr,
    )
    return code
