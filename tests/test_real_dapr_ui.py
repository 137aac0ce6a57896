"""The page of `classifier ui` calling the app through a real daprd's HTTP invoke API.

daprd 1.18 sends CORS headers only when started with `--allowed-origins` (its default is none:
dapr/pkg/api/http/server.go `useCors`, dapr/pkg/cors/cors.go), and the page is served from
another origin than the sidecar's. One stack: the app's daprd allows the page's origin, and a
second sidecar (another app id, no `--allowed-origins`) reaches the same app by name resolution;
a page pointed at it shows what to do instead of a blank failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import IMAGES, MODELS, SHARED
from dapr.clients import DaprClient
from real_dapr import LOOPBACK, Daprd, Stack, sidecar_env, stack
from ui_page import UiProcess, chromium, free_port, open_page

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
