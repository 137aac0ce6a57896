"""`classifier ui` and `classifier demo --ui` in a real browser (Debian's chromium, Playwright).

The page is opened as a person opens it: images picked with the file chooser (by mouse and by
keyboard) or dropped on the page, a model chosen from those the store has; what it shows is read
back from the page and checked against ../shared/expected.json and the service's own answers
(the bars, labels, scores, model version and time), the error states (a file that is not an image,
a model removed from the store meanwhile), keyboard use, accessible names and the colour contrast
of every text. The run writes a screenshot to .ui/ui.png (docs/ui.png is a copy of one).
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IMAGES, MODELS, ROOT, SHARED
from PIL import Image
from ui_page import (
    UiProcess,
    chromium,
    contrast_pairs,
    focused_id,
    free_port,
    open_chooser_by_keyboard,
    open_page,
)

from service.stores.local import LocalStore

BIRD = IMAGES / "classify" / "bird.jpg"
SPARROW = IMAGES / "classify" / "sparrow.png"
EXPECTED = json.loads((SHARED / "expected.json").read_text())["cases"]
MODEL_DIRS = {"birds": "aiy_birds_v1", "mobilenet": "mobilenet_v2_1.0_224_quant"}
README = ROOT / "README.md"
SCREENSHOT = ROOT / ".ui" / "ui.png"


def top1_label(model: str, image: Path) -> str:
    relative = str(image.relative_to(SHARED))
    [case] = [c for c in EXPECTED if c["model"] == MODEL_DIRS[model] and c["image"] == relative]
    return str(case["top1_label"])


def put(store: LocalStore, name: str, model_dir: str) -> None:
    folder = MODELS / model_dir
    store.put(name, (folder / "model.tflite").read_bytes(), (folder / "labels.txt").read_text().splitlines())


def readme_try_it() -> tuple[str, str]:
    """The command and the line it prints, from the README's "Try it in a browser"."""
    section = README.read_text().split("## Try it in a browser\n", 1)[1]
    block = section.split("```console\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[0].startswith("$ classifier ui"), block
    return block[0].removeprefix("$ "), block[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the README's ./.classifier: birds, mobilenet, and `doomed` (removed by a test)."""
    work = tmp_path_factory.mktemp("ui")
    store = LocalStore(work / ".classifier")
    put(store, "birds", "aiy_birds_v1")
    put(store, "mobilenet", "mobilenet_v2_1.0_224_quant")
    put(store, "doomed", "aiy_birds_v1")
    return work


@pytest.fixture(scope="module")
def ui(work: Path) -> Iterator[str]:
    """The README's `classifier ui` command, run as shown (on a free port), printing what it shows."""
    command, shown = readme_try_it()
    port = free_port()
    args = shlex.split(command)[1:]
    args[args.index("--port") + 1] = str(port)
    process = UiProcess(args, cwd=work, env={"CLASSIFIER_POLL_S": "0.2"}, log=work / "ui.log")
    try:
        line = process.wait_line("classifier ui:")
        shown_port = re.search(r"127\.0\.0\.1:(\d+)/", shown)
        assert shown_port, shown
        assert line == shown.replace(f"127.0.0.1:{shown_port.group(1)}/", f"127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}/"
    finally:
        assert process.stop() == 0, process.log()[-3000:]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with chromium() as launched:
        yield launched


@pytest.mark.browser
def test_picked_images_show_bars_labels_scores_version_and_time(ui: str, browser) -> None:
    with open_page(browser, ui) as opened:
        page = opened.page
        assert page.title() == "Image classifier"
        models = page.locator("#model option").all_text_contents()
        assert {"birds (version 1)", "mobilenet (version 1)"} <= set(models)
        page.select_option("#model", "birds")
        page.set_input_files("#images", [BIRD, SPARROW])
        opened.wait_answered(2)
        answers = opened.calls("classify", 2)
        assert [a["model"] for a in answers] == ["birds", "birds"]
        for image, answer in zip((BIRD, SPARROW), answers, strict=True):
            shown = opened.shown(image.name)
            assert shown["error"] is None
            predictions = answer["predictions"]
            assert 1 <= len(predictions) <= 5
            assert shown["labels"] == [p["label"] for p in predictions]
            assert shown["scores"] == [f"{p['score']:.3f}" for p in predictions]
            for width, p in zip(shown["bars"], predictions, strict=True):  # bar length = score
                assert width == pytest.approx(p["score"], abs=0.01)
            assert shown["data"] == {"model": "birds", "version": "1", "elapsedMs": str(answer["elapsed_ms"])}
            assert shown["meta"].startswith(
                f"birds version 1 · {answer['elapsed_ms']:.1f} ms in the service · "
            )
            assert re.search(r" · \d+ ms round trip$", shown["meta"]), shown["meta"]
            assert shown["alt"] == f"{image.name}, classified as {predictions[0]['label']}"
        assert opened.shown(BIRD.name)["labels"][0] == top1_label("birds", BIRD)
        assert page.locator("#status").text_content() == "Classified 2 of 2."
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        # Nothing fetched from anywhere but the page's own server (the images are blob: URLs).
        assert {r.url.split("/", 3)[2] for r in opened.requests if not r.url.startswith("blob:")} == {
            ui.split("/")[2]
        }
        assert opened.console_errors == []
    with Image.open(SCREENSHOT) as produced, Image.open(ROOT / "docs" / "ui.png") as committed:
        assert produced.width == committed.width == 1000  # the README's is a screenshot of this test


@pytest.mark.browser
def test_dropped_images_are_classified_with_the_chosen_model(ui: str, browser) -> None:
    with open_page(browser, ui) as opened:
        page = opened.page
        page.select_option("#model", "mobilenet")
        page.fill("#top-k", "3")
        opened.drop([BIRD])
        opened.wait_answered(1)
        assert "dragging" not in (page.get_attribute("#drop-zone", "class") or "")
        shown = opened.shown(BIRD.name)
        assert shown["labels"][0] == top1_label("mobilenet", BIRD)
        assert len(shown["labels"]) == 3
        assert shown["meta"].startswith("mobilenet version 1 · ")


@pytest.mark.browser
def test_a_file_that_is_not_an_image_is_a_clear_error_and_the_page_goes_on(
    ui: str, browser, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    with open_page(browser, ui) as opened:
        page = opened.page
        page.select_option("#model", "birds")
        page.set_input_files("#images", [notes])
        opened.wait_answered(1)
        shown = opened.shown("notes.txt")
        assert shown["error"].startswith("invalid_argument (HTTP 400): the image could not be decoded: ")
        assert shown["preview"] == "No preview: the browser cannot show this file."
        assert shown["labels"] == []
        assert page.locator("#status").text_content() == "Classified 0 of 1; 1 failed."
        page.set_input_files("#images", [BIRD])  # the next image is classified as usual
        opened.wait_answered(2)
        assert opened.shown(BIRD.name)["labels"][0] == top1_label("birds", BIRD)


@pytest.mark.browser
def test_a_model_removed_from_the_store_is_a_clear_error(ui: str, work: Path, browser) -> None:
    with open_page(browser, ui) as opened:
        page = opened.page
        assert "doomed (version 1)" in page.locator("#model option").all_text_contents()
        LocalStore(work / ".classifier").remove("doomed")  # as `classifier models rm doomed` does

        def listed() -> list[str]:
            with urllib.request.urlopen(f"{ui}api/models", timeout=30) as answer:
                return [m["name"] for m in json.load(answer)["models"]]

        from real_dapr import wait_for

        wait_for(lambda: "doomed" not in listed(), 60, "the service no longer serving `doomed`")
        page.select_option("#model", "doomed")  # the page still offers it: it listed it before
        page.set_input_files("#images", [BIRD])
        opened.wait_answered(1)
        error = opened.shown(BIRD.name)["error"]
        assert error.startswith("not_found (HTTP 404): model 'doomed' not found in ")
        assert error.endswith("The list of models has been reloaded.")
        page.locator("#model option", has_text="doomed").wait_for(state="detached", timeout=30_000)
        assert page.input_value("#model") in {"birds", "mobilenet"}


@pytest.mark.browser
def test_usable_by_keyboard_alone(ui: str, browser) -> None:
    with open_page(browser, ui) as opened:
        page = opened.page
        page.keyboard.press("Tab")
        assert focused_id(page) == "model"
        outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid"  # the focus is visible
        options = page.locator("#model option").evaluate_all("options => options.map(o => o.value)")
        first = page.input_value("#model")
        page.keyboard.press("ArrowDown" if options.index(first) + 1 < len(options) else "ArrowUp")
        chosen = page.input_value("#model")
        assert chosen != first
        page.keyboard.press("Tab")
        assert focused_id(page) == "top-k"
        page.keyboard.press("Control+a")
        page.keyboard.type("2")
        page.keyboard.press("Tab")
        assert focused_id(page) == "images"
        chooser = open_chooser_by_keyboard(page, "images")
        assert chooser.is_multiple()
        chooser.set_files(BIRD)
        opened.wait_answered(1)
        shown = opened.shown(BIRD.name)
        assert shown["error"] is None and len(shown["labels"]) <= 2
        assert shown["meta"].startswith(f"{chosen} version ")


@pytest.mark.browser
def test_accessible_names_text_alternatives_and_contrast(ui: str, browser, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    with open_page(browser, ui) as opened:
        page = opened.page
        assert page.get_attribute("html", "lang") == "en"
        # Every control is found by its label, as a screen reader announces it.
        assert page.get_by_role("combobox", name="Model").get_attribute("id") == "model"
        assert page.get_by_role("spinbutton", name="Classes to show").get_attribute("id") == "top-k"
        assert page.get_by_label("Images").get_attribute("id") == "images"
        assert page.get_by_role("heading", name="Results").count() == 1
        page.select_option("#model", "birds")
        page.set_input_files("#images", [BIRD, notes])
        opened.wait_answered(2)
        # Each image has a text alternative; each error is announced (role=alert); the status line is live.
        alts = page.locator("#results img").evaluate_all("images => images.map(i => i.alt)")
        assert alts and all(alt.startswith(BIRD.name) for alt in alts)
        assert page.get_by_role("alert").count() == 1
        assert page.get_attribute("#status", "aria-live") == "polite"
        assert page.get_by_role("list", name=f"Top classes for {BIRD.name}").count() == 1
        pairs = contrast_pairs(page)
        texts = {p["text"] for p in pairs}
        assert {"Model", "Images", "file selector button", BIRD.name} <= texts  # what was measured
        assert any(p["text"].startswith("invalid_argument") for p in pairs)
        low = [(p["text"], round(p["ratio"], 2), p["color"]) for p in pairs if p["ratio"] < p["required"]]
        assert low == []


def test_the_endpoint_answers_as_the_sidecar_would(ui: str) -> None:
    """The page's /api gives the service's answers and errors as daprd's HTTP API renders them."""
    host, port = ui.split("/")[2].split(":")
    with urllib.request.urlopen(f"{ui}api/models", timeout=30) as answer:
        assert answer.headers["Content-Security-Policy"].count("connect-src 'self';") == 1
        assert {"birds", "mobilenet"} <= {m["name"] for m in json.load(answer)["models"]}

    def post(path: str, body: bytes | None, length: int | None = None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.putrequest("POST", path)
            if length is not None:
                connection.putheader("Content-Length", str(length))
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    status, body = post("/api/classify?model=nosuch", BIRD.read_bytes(), len(BIRD.read_bytes()))
    assert status == 404
    [detail] = body["details"]
    trace_id = detail.get("metadata", {}).get("trace_id", "")
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), detail  # the request's trace (docs: Observability)
    assert detail == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "NOT_FOUND",
        "domain": "image-classifier",
        "metadata": {"trace_id": trace_id},
    }
    assert body["code"] == 5 and body["message"].startswith("model 'nosuch' not found")
    status, body = post("/api/classify?model=birds", None, 17 << 20)  # over the limit: refused unread
    assert status == 429 and body["details"][0]["reason"] == "RESOURCE_EXHAUSTED", body
    status, body = post("/api/classify?model=birds", None)
    assert status == 400 and "Content-Length" in body["message"]
    status, body = post("/api/detect", b"", 0)
    assert status == 404 and body["message"] == "no such page: /api/detect"


@pytest.mark.browser
def test_the_demo_serves_the_page_over_its_serve(work: Path, browser, tmp_path: Path) -> None:
    port = free_port()
    demo = UiProcess(
        ["demo", str(BIRD), "--model", "birds", "--ui", "--ui-port", str(port)],
        cwd=work,
        env={},
        log=tmp_path / "demo.log",
    )
    try:
        line = demo.wait_line("classifier ui:")
        assert line.startswith(f"classifier ui: http://127.0.0.1:{port}/ (calls classifier serve (pid ")
        assert any(o.startswith(str(BIRD)) and top1_label("birds", BIRD) in o for o in demo.output)
        with open_page(browser, f"http://127.0.0.1:{port}/") as opened:
            opened.page.select_option("#model", "birds")
            opened.page.set_input_files("#images", [SPARROW])
            opened.wait_answered(1)
            assert opened.shown(SPARROW.name)["meta"].startswith("birds version 1 · ")
    finally:
        code = demo.stop(signal.SIGINT)  # Ctrl-C
    assert code == 0, demo.log()[-3000:]
    assert demo.rest_of_output()[-1] == "classifier serve stopped on SIGTERM with exit code 0"


def test_a_port_that_cannot_be_used_is_one_line(work: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for bad, message in (
            (str(port), f"classifier: cannot listen on 127.0.0.1:{port}: Address already in use; "
             "choose another port with --port"),
            ("70000", "classifier: --port 70000: must be a port number (0-65535)"),
        ):  # fmt: skip
            process = UiProcess(["ui", "--port", bad], cwd=work, env={}, log=tmp_path / f"ui-{bad}.log")
            assert process.process.wait(120) == 1
            assert process.log().strip().splitlines()[-1] == message


@pytest.mark.browser
def test_a_store_with_no_model_yet_says_so_until_one_is_stored(browser, tmp_path: Path) -> None:
    port = free_port()
    process = UiProcess(["ui", "--port", str(port)], cwd=tmp_path, env={}, log=tmp_path / "ui.log")
    try:
        process.wait_line("classifier ui:")
        with open_page(browser, f"http://127.0.0.1:{port}/", wait_ready=False) as opened:
            status = opened.page.locator("#status")
            # First "the service is starting", then, once start-up has looked in the store, this:
            opened.page.locator("#status", has_text="no model in the store yet").wait_for(timeout=60_000)
            assert status.text_content() == (
                "The service is not ready yet: unavailable (HTTP 503): no model in the store yet: "
                "upload one with `classifier models put`. Trying again…"
            )
            put(LocalStore(tmp_path / ".classifier"), "birds", "aiy_birds_v1")  # the page needs no reload
            opened.page.locator("body[data-ready]").wait_for(timeout=60_000)
            assert opened.page.locator("#model option").all_text_contents() == ["birds (version 1)"]
            assert status.text_content() == "1 model in the store."
    finally:
        assert process.stop() == 0, process.log()[-3000:]


@pytest.mark.browser
def test_without_a_sidecar_the_stream_view_says_it_needs_one(ui: str, browser) -> None:
    with open_page(browser, ui) as opened:
        page = opened.page
        assert page.get_by_role("heading", name="Stream").count() == 1
        summary = page.locator("#stream-summary")
        assert summary.text_content() == (
            "Streams need a Dapr sidecar: start classifier ui with one (dapr run … -- classifier ui) "
            "to follow the results of a stream here."
        )
        assert summary.get_attribute("aria-live") == "polite"
        assert page.get_by_label("Stream id").is_disabled()
        assert page.get_by_role("button", name="Follow").is_disabled()
        assert not any("/api/streams/" in r.url for r in opened.requests)
        assert opened.console_errors == []


def damage(store: Path, name: str) -> None:
    """Change a stored model's bytes on disk, as a disk fault would: its sha256 no longer matches."""
    [model_file] = store.glob(f"models/{name}/*/*.tflite")
    model_file.write_bytes(model_file.read_bytes()[:-1] + b"!")


def test_a_store_whose_model_is_damaged_ends_the_page_with_one_line(tmp_path: Path) -> None:
    put(LocalStore(tmp_path / ".classifier"), "birds", "aiy_birds_v1")
    damage(tmp_path / ".classifier", "birds")
    process = UiProcess(["ui", "--port", "0"], cwd=tmp_path, env={}, log=tmp_path / "ui.log")
    try:
        process.wait_line("classifier ui:")
        assert process.process.wait(120) == 1
    finally:
        process.stop()
    last = process.log().strip().splitlines()[-1]
    assert last.startswith("classifier: start-up failed: model 'birds' version 1") and "sha256" in last, last
    assert "Traceback" not in process.log()


def test_a_page_over_a_sidecar_serves_no_api_of_its_own(tmp_path: Path) -> None:
    """With only DAPR_HTTP_PORT the page calls the sidecar's invoke API: /api is not this server's, and
    with no DAPR_GRPC_PORT there are no stream events either."""
    port = free_port()
    process = UiProcess(["ui", "--port", str(port)], cwd=tmp_path, env={"DAPR_HTTP_PORT": "3500"},
                        log=tmp_path / "ui.log")  # fmt: skip
    try:
        process.wait_line("classifier ui:")
        for method, path in [("POST", "/api/classify?model=birds"), ("GET", "/api/models"), ("GET", "/nope")]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                connection.request(method, path, body=b"x" if method == "POST" else None)
                answer = connection.getresponse()
                body = json.loads(answer.read())
            finally:
                connection.close()
            assert (answer.status, body["code"], body["message"]) == (404, 5, f"no such page: {path}"), body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config.json", timeout=30) as answer:
            config = json.load(answer)
        assert config == {
            "invoke_base": "http://127.0.0.1:3500/v1.0/invoke/image-classifier/method",
            "served_by": "image-classifier through the Dapr sidecar",
            "streams": False,
        }
    finally:
        assert process.stop() == 0, process.log()[-3000:]


def test_the_page_over_an_app_that_is_not_there_answers_503() -> None:
    """`classifier demo --ui` once its serve has gone: the app's port refuses, the page gets daprd's 503."""
    from service.ui.server import AppChannel

    app = AppChannel(free_port())
    try:
        answer = app.invoke("classify", "POST", BIRD.read_bytes(), "image/jpeg", "model=birds")
    finally:
        app.close()
    body = json.loads(answer.body)
    assert (answer.status, answer.content_type, body["code"]) == (503, "application/json", 14), body
    assert body["message"], body
