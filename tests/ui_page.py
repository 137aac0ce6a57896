"""The page of `classifier ui` in a real browser, and the `classifier ui` process behind it.

The browser is Debian's chromium (`python -m tools.browser install`) driven by Playwright; each
`classifier ui` (or `classifier demo --ui`) runs as a real process on a free loopback port and is
stopped by PID. `contrast_pairs` reads, in the browser, the colour and background of every piece of
text on the page; `contrast_ratio` is WCAG 2's formula.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, FileChooser, Page, Request, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from real_dapr import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.browser import chromium_path  # noqa: E402

START_S = 120.0  # generous: the machine is shared
ANSWER_S = 60.0
__all__ = ["UiProcess", "chromium", "free_port", "open_page"]


class UiProcess:
    """`python -m service ARGS...` (`ui` or `demo --ui`), its stdout read line by line."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> None:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))
        }
        environment.update(env)
        self.log_path = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, prefix: str, timeout: float = START_S) -> str:
        """The first line of stdout starting with `prefix` (the lines before it are kept in `output`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    raise AssertionError(
                        f"exited with {self.process.returncode} before printing {prefix!r}: "
                        f"{self.output}\n{self.log()[-3000:]}"
                    ) from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"no line {prefix!r} within {timeout} s: {self.output}") from None
                continue
            self.output.append(line)
            if line.startswith(prefix):
                return line

    def rest_of_output(self, timeout: float = 30.0) -> list[str]:
        """The lines printed until the process exits (after stop())."""
        self.process.wait(timeout)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                self.output.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                if self.process.stdout is None or self.process.stdout.closed:
                    break
        return self.output

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian chromium, through Playwright."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path()))
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class OpenPage:
    """A page in a fresh browser context, with every request it made and every console error."""

    page: Page
    requests: list[Request] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    answers: list[tuple[str, int, Any]] = field(default_factory=list)  # (url, status, JSON) of each call

    def _finished(self, request: Request) -> None:
        response = request.response()
        if (
            response is not None
            and request.method != "OPTIONS"
            and ("/classify" in request.url or "/models" in request.url)
        ):
            self.answers.append((request.url, response.status, json.loads(response.body())))

    def calls(self, method: str, count: int, timeout: float = ANSWER_S) -> list[Any]:
        """The JSON answers to the page's first `count` calls of `method`, once Playwright has
        reported them (its events reach Python while it is called: waiting in the page pumps them)."""
        deadline = time.monotonic() + timeout
        while True:
            answers = [body for url, _, body in self.answers if f"/{method}" in url.split("?")[0]]
            if len(answers) >= count:
                return answers[:count]
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(answers)} of {count} {method} answers within {timeout} s")
            self.page.wait_for_timeout(50)

    def results(self) -> Any:
        return self.page.locator("#results > li")

    def result(self, file_name: str) -> Any:
        return self.page.locator(f'#results > li[data-file="{file_name}"]').last

    def wait_answered(self, count: int, timeout: float = ANSWER_S) -> None:
        """Until `count` result cards have their answer (predictions or an error)."""
        answered = self.page.locator("#results > li .meta, #results > li .error")
        answered.nth(count - 1).wait_for(timeout=timeout * 1000)

    def shown(self, file_name: str) -> dict[str, Any]:
        """What the card of `file_name` shows: labels, scores, bar widths (as fractions of their
        track), the meta line and its data, the image's alt text, the error."""
        card = self.result(file_name)
        return card.evaluate(
            """card => {
                const all = (selector) => [...card.querySelectorAll(selector)];
                const one = (selector) => card.querySelector(selector);
                const width = (e) => e.getBoundingClientRect().width;
                return {
                    labels: all('.prediction .label').map(e => e.textContent),
                    scores: all('.prediction .score').map(e => e.textContent),
                    bars: all('.prediction .bar').map(bar => width(bar.firstElementChild) / width(bar)),
                    meta: one('.meta') ? one('.meta').textContent : null,
                    data: one('.meta') ? {...one('.meta').dataset} : null,
                    alt: one('img') ? one('img').alt : null,
                    preview: one('.no-preview') ? one('.no-preview').textContent : null,
                    error: one('.error[role=alert]') ? one('.error').textContent : null,
                };
            }"""
        )

    def drop(self, files: list[Path], selector: str = "#drop-zone") -> None:
        """Drag files over the page and drop them on `selector`, as a person does from a file manager."""
        payload = [{"name": f.name, "data": base64.b64encode(f.read_bytes()).decode()} for f in files]
        transfer = self.page.evaluate_handle(
            """files => {
                const transfer = new DataTransfer();
                for (const f of files) {
                    const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
                    transfer.items.add(new File([bytes], f.name));
                }
                return transfer;
            }""",
            payload,
        )
        self.page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
        self.page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
        self.page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


@contextlib.contextmanager
def open_page(browser: Browser, url: str, *, wait_ready: bool = True) -> Iterator[OpenPage]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    opened = OpenPage(page)
    page.on("request", lambda request: opened.requests.append(request))
    page.on("requestfinished", opened._finished)  # bodies are read at once: the browser evicts them
    page.on("console", lambda m: m.type == "error" and opened.console_errors.append(m.text))
    try:
        page.goto(url)
        if wait_ready:
            page.locator("body[data-ready]").wait_for(timeout=START_S * 1000)
        yield opened
    finally:
        context.close()


def focused_id(page: Page) -> str:
    return str(page.evaluate("() => document.activeElement ? document.activeElement.id : ''"))


def open_chooser_by_keyboard(page: Page, input_id: str) -> FileChooser:
    """Open the focused file input's chooser with Space, or with Enter if the chooser did not
    open: headless Chromium now and then drops a key press on a busy machine (it did in one
    clean-clone CI run). Either is a keyboard user's way in; if neither opens it, the test fails."""
    for key in ("Space", "Enter"):
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press(key)
            return chooser.value
        except PlaywrightTimeoutError:
            assert focused_id(page) == input_id  # the key was dropped, not the focus lost
    raise AssertionError(f"neither Space nor Enter opened the file chooser of #{input_id}")


# Every visible text of the page, with its colour and the backgrounds behind it (innermost first),
# its font size and weight; form controls' own text and the file picker's button too.
_TEXT_COLOURS = """() => {
    const chain = (node) => {
        const backgrounds = [];
        for (let e = node; e; e = e.parentElement) backgrounds.push(getComputedStyle(e).backgroundColor);
        return backgrounds;
    };
    const entry = (node, text, style) => ({
        text: text.trim().slice(0, 60), color: style.color,
        backgrounds: [style.backgroundColor, ...chain(node.parentElement)],
        size: parseFloat(style.fontSize), weight: parseInt(style.fontWeight, 10),
    });
    const found = [];
    for (const node of document.querySelectorAll('body *')) {
        if (!node.getClientRects().length) continue;
        const style = getComputedStyle(node);
        if (style.visibility === 'hidden' || style.display === 'none') continue;
        const texts = [...node.childNodes].filter(n => n.nodeType === Node.TEXT_NODE);
        const own = texts.map(n => n.textContent).join('');
        if (own.trim()) found.push(entry(node, own, style));
        if (node.matches('select, input[type=number]')) found.push(entry(node, node.value || 'x', style));
        if (node.matches('input[type=file]')) {
            const button = getComputedStyle(node, '::file-selector-button');
            found.push({text: 'file selector button', color: button.color,
                        backgrounds: [button.backgroundColor, ...chain(node)],
                        size: parseFloat(button.fontSize), weight: parseInt(button.fontWeight, 10)});
        }
    }
    return found;
}"""


def _rgba(css: str) -> tuple[float, float, float, float]:
    inner = css[css.index("(") + 1 : css.index(")")].replace("/", " ").replace(",", " ").split()
    r, g, b = (float(v) for v in inner[:3])
    return r, g, b, float(inner[3]) if len(inner) > 3 else 1.0


def _over(
    top: tuple[float, float, float, float], below: tuple[float, float, float]
) -> tuple[float, float, float]:
    r, g, b, a = top
    return (r * a + below[0] * (1 - a), g * a + below[1] * (1 - a), b * a + below[2] * (1 - a))


def _luminance(rgb: tuple[float, float, float]) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(foreground: tuple[float, float, float], background: tuple[float, float, float]) -> float:
    """WCAG 2.x: (L1 + 0.05) / (L2 + 0.05), the lighter luminance over the darker."""
    light, dark = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def contrast_pairs(page: Page) -> list[dict[str, Any]]:
    """Every visible text with its contrast ratio against what is behind it, and the ratio WCAG AA
    asks of it (3 for large text: 24 px, or 18.67 px bold; else 4.5)."""
    pairs = []
    for item in page.evaluate(_TEXT_COLOURS):
        background: tuple[float, float, float] = (255.0, 255.0, 255.0)  # the canvas behind everything
        for layer in reversed(item["backgrounds"]):
            background = _over(_rgba(layer), background)
        colour = _over(_rgba(item["color"]), background)
        large = item["size"] >= 24 or (item["size"] >= 18.66 and item["weight"] >= 700)
        pairs.append({**item, "ratio": contrast_ratio(colour, background), "required": 3.0 if large else 4.5})
    return pairs
