"""The page of `classifier ui` calling the app through a real daprd's HTTP invoke API.

daprd 1.18 sends CORS headers only when started with `--allowed-origins` (its default is none:
dapr/pkg/api/http/server.go `useCors`, dapr/pkg/cors/cors.go), and the page is served from
another origin than the sidecar's. One stack: the app's daprd allows the page's origin, and a
second sidecar (another app id, no `--allowed-origins`) reaches the same app by name resolution;
a page pointed at it shows what to do instead of a blank failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import IMAGES, MODELS, SHARED
from dapr.clients import DaprClient
from real_dapr import LOOPBACK, Daprd, Stack, sidecar_env, stack
from ui_page import UiProcess, chromium, focused_id, free_port, open_page

from service.stores.dapr import DaprStore

pytestmark = [pytest.mark.dapr, pytest.mark.browser]

BIRD = IMAGES / "classify" / "bird.jpg"
[BIRD_TOP1] = [
    c["top1_label"]
    for c in json.loads((SHARED / "expected.json").read_text())["cases"]
    if c["model"] == "aiy_birds_v1" and c["image"] == "images/classify/bird.jpg"
]


@dataclass
class Sidecars:
    stack: Stack
    daprd: Daprd  # the app's own, with --allowed-origins for `origin`
    caller: Daprd  # another app id's, without it
    ui_port: int

    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.ui_port}"


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecars]:
    workdir = tmp_path_factory.mktemp("ui-dapr")
    ui_port = free_port()
    with stack(workdir, replicas=0) as built:
        daprd, app = built.add_replica(daprd_args=("--allowed-origins", f"http://{LOOPBACK}:{ui_port}"))
        birds = MODELS / "aiy_birds_v1"
        with sidecar_env(daprd), DaprClient() as client:
            DaprStore(client, workdir / "uploader-cache").put(
                "birds",
                (birds / "model.tflite").read_bytes(),
                (birds / "labels.txt").read_text().splitlines(),
            )
        app.wait_ready()
        caller = built.add_sidecar("ui-caller")
        yield Sidecars(built, daprd, caller, ui_port)


def start_ui(sidecar: Daprd, port: int, workdir: Path) -> UiProcess:
    return UiProcess(
        ["ui", "--port", str(port)],
        cwd=workdir,
        env={k: v for k, v in sidecar.env().items() if k.startswith("DAPR_")},
        log=workdir / f"ui-{port}.log",
    )


def test_the_page_calls_the_app_through_daprd_with_allowed_origins(sidecars: Sidecars) -> None:
    daprd = sidecars.daprd
    ui = start_ui(daprd, sidecars.ui_port, sidecars.stack.workdir)
    try:
        line = ui.wait_line("classifier ui:")
        sidecar = f"http://{LOOPBACK}:{daprd.http_port}"
        assert line == (
            f"classifier ui: {sidecars.origin}/ (calls image-classifier through the Dapr sidecar at "
            f"{sidecar}, which must allow this origin: daprd --allowed-origins {sidecars.origin}; "
            "Ctrl-C stops)"
        )
        with chromium() as browser, open_page(browser, f"{sidecars.origin}/") as opened:
            page = opened.page
            assert page.locator("#model option").all_text_contents() == ["birds (version 1)"]
            page.set_input_files("#images", [BIRD])
            opened.wait_answered(1)
            shown = opened.shown(BIRD.name)
            assert shown["labels"][0] == BIRD_TOP1 and shown["meta"].startswith("birds version 1 · ")
            # The calls went to daprd's invoke API, cross-origin, and daprd allowed the page's origin.
            invoke = f"{sidecar}/v1.0/invoke/image-classifier/method"
            calls = [(r.method, r.url) for r in opened.requests if r.url.startswith(sidecar)]
            assert calls == [("GET", f"{invoke}/models"), ("POST", f"{invoke}/classify?model=birds&top_k=5")]
            classify = next(r for r in opened.requests if r.method == "POST")
            assert classify.response().headers["access-control-allow-origin"] == sidecars.origin
            # The POST's preflight (its Content-Type is not a "simple" one), which the browser
            # sent first and Playwright does not list, as daprd answers it:
            preflight = daprd.http(
                "OPTIONS",
                "/v1.0/invoke/image-classifier/method/classify",
                headers={
                    "Origin": sidecars.origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type",
                },
            )
            assert preflight.status in (200, 204)
            assert preflight.headers["Access-Control-Allow-Origin"] == sidecars.origin
            assert "POST" in preflight.headers["Access-Control-Allow-Methods"]

            # daprd's error body (the app's status as protojson, sent as text/plain) reads as clearly.
            notes = sidecars.stack.workdir / "notes.txt"
            notes.write_text("not an image\n")
            page.set_input_files("#images", [notes])
            opened.wait_answered(2)
            error = opened.shown("notes.txt")["error"]
            assert error.startswith("invalid_argument (HTTP 400): the image could not be decoded: "), error
            assert opened.console_errors == [
                "Failed to load resource: the server responded with a status of 400 (Bad Request)"
            ]
    finally:
        assert ui.stop() == 0, ui.log()[-3000:]


def test_without_allowed_origins_the_page_says_what_daprd_needs(sidecars: Sidecars) -> None:
    caller = sidecars.caller
    # daprd itself answers a cross-origin call, without an Access-Control-Allow-Origin header.
    direct = caller.http(
        "GET", "/v1.0/invoke/image-classifier/method/models", headers={"Origin": "http://127.0.0.1:1"}
    )
    assert direct.status == 200
    assert "Access-Control-Allow-Origin" not in direct.headers
    port = free_port()
    ui = start_ui(caller, port, sidecars.stack.workdir)
    try:
        ui.wait_line("classifier ui:")
        with (
            chromium() as browser,
            open_page(browser, f"http://{LOOPBACK}:{port}/", wait_ready=False) as opened,
        ):
            status = opened.page.locator("#status.error")
            status.wait_for(timeout=60_000)
            assert status.text_content() == (
                f"Could not read an answer from the Dapr sidecar at http://{LOOPBACK}:{caller.http_port} "
                f"(Failed to fetch). If daprd runs there, start it with --allowed-origins "
                f"http://{LOOPBACK}:{port}: without it daprd sends no CORS headers, and the browser keeps "
                "its answers from this page."
            )
            assert opened.page.locator("#model option").count() == 0
    finally:
        assert ui.stop() == 0, ui.log()[-3000:]


# Frames of one stream for the birds model: each one's top-1 from ../shared/expected.json.
FRAMES = ["bird.jpg", "sparrow.png", "burger.jpg", "bird.jpg"]
TOP1 = {
    Path(c["image"]).name: c["top1_label"]
    for c in json.loads((SHARED / "expected.json").read_text())["cases"]
    if c["model"] == "aiy_birds_v1"
}


def publish_frames(sidecar: Daprd, frames: Path, stream_id: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))}
    env.update({k: v for k, v in sidecar.env().items() if k.startswith("DAPR_")})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "publish",
            "--frames",
            str(frames),
            "--stream-id",
            stream_id,
            "--model",
            "birds",
            "--fps",
            "20",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_the_stream_view_shows_a_stream_live_in_seq_order(sidecars: Sidecars) -> None:
    """publish --frames -> daprd -> Redis -> classifier serve -> results topic -> the page server's
    subscription (through the same daprd) -> SSE -> the page's rows and counts; by keyboard alone."""
    workdir = sidecars.stack.workdir
    frames = workdir / "frames"
    frames.mkdir()
    for seq, name in enumerate(FRAMES):  # by name, in seq order: the folder is published sorted
        (frames / f"{seq:02d}-{name}").symlink_to(IMAGES / "classify" / name)
    stream_id = f"ui-cam-{uuid.uuid4().hex[:6]}"
    # A sidecar of its own (an app id no page server subscribed with before: see docs/ui.md), which
    # reaches the app by name and allows the page's origin.
    port = free_port()
    origin = f"http://{LOOPBACK}:{port}"
    viewer = sidecars.stack.add_sidecar(
        f"ui-viewer-{uuid.uuid4().hex[:6]}", daprd_args=("--allowed-origins", origin)
    )
    ui = start_ui(viewer, port, workdir)
    try:
        ui.wait_line("classifier ui:")
        with chromium() as browser, open_page(browser, f"{origin}/") as opened:
            page = opened.page
            # The app's first classification with a model is its slowest: have it before the stream.
            page.set_input_files("#images", [BIRD])
            opened.wait_answered(1)
            summary = page.locator("#stream-summary")
            assert page.get_by_role("heading", name="Stream").count() == 1
            assert page.get_by_label("Stream id").get_attribute("id") == "stream-id"
            assert summary.get_attribute("aria-live") == "polite"
            assert summary.get_attribute("role") == "status"
            # By keyboard: from the file picker, Tab to the stream id, type it, Tab to Follow, Enter.
            page.focus("#images")
            page.keyboard.press("Tab")
            assert focused_id(page) == "stream-id"
            page.keyboard.type(stream_id)
            page.keyboard.press("Tab")
            assert focused_id(page) == "stream-follow"
            assert page.get_by_role("button", name="Follow").count() == 1
            page.keyboard.press("Enter")
            following = f"Following stream {stream_id}: "
            wait_text(summary, f"{following}0 frames received, 0 skipped, 0 duplicates.")
            assert page.get_by_role("button", name="Stop").count() == 1
            assert page.locator("#stream-id").is_disabled()

            publish_frames(sidecars.caller, frames, stream_id)
            wait_text(summary, f"{following}4 frames received, 0 skipped, 0 duplicates.")
            rows = shown_rows(page)
            assert [r[0] for r in rows] == ["0", "1", "2", "3"]
            assert [r[1] for r in rows] == [TOP1[name] for name in FRAMES]
            assert all(re.fullmatch(r"0\.\d{3}|1\.000", r[2]) for r in rows), rows
            assert {r[3] for r in rows} == {"birds version 1"}
            assert all(re.fullmatch(r"\d+ ms", r[4]) for r in rows), rows
            assert page.locator("#stream-frames tr[aria-live]").count() == 0  # the summary is live, not rows

            # The same frames again (seq 0-3 of the same stream): each one a duplicate, no new row.
            publish_frames(sidecars.caller, frames, stream_id)
            wait_text(summary, f"{following}4 frames received, 0 skipped, 4 duplicates.")
            assert len(shown_rows(page)) == 4

            page.keyboard.press("Enter")  # Stop: the focus stayed on the button
            assert page.get_by_role("button", name="Follow").count() == 1
            assert page.locator("#stream-id").is_enabled()
            assert opened.console_errors == []
    finally:
        assert ui.stop() == 0, ui.log()[-3000:]


def wait_text(locator: Any, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while locator.text_content() != text:
        shown = f"{locator.text_content()!r}, rows {shown_rows(locator.page)}"
        assert time.monotonic() < deadline, f"{shown}, not {text!r}"
        locator.page.wait_for_timeout(100)


def shown_rows(page: Any) -> list[list[str]]:
    return page.locator("#stream-frames tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
