"""Shared fixtures: the ../shared data, test guests built once, a store holding every model."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path
from typing import TypeVar

import pytest

from service.config import Settings
from service.pipeline import Classifier
from service.stores.local import LocalStore
from service.wasm.call import GuestCall, GuestLimits
from service.wasm.host import GuestResult, Preopen, WasmHost

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the project; CLASSIFIER_TEST_SHARED for a copy of the tests run elsewhere (mutmut).
SHARED = Path(os.environ.get("CLASSIFIER_TEST_SHARED") or ROOT.parent / "shared").resolve()
MODELS = SHARED / "models"
IMAGES = SHARED / "images"

sys.path.insert(0, str(ROOT / "wasm"))
from build import compile_guest  # noqa: E402
from hardening import hardening, pytest_sessionfinish  # noqa: E402, F401  (records for docs/hardening.md)

if not MODELS.is_dir():
    pytest.exit(f"the shared test data is missing: {SHARED}", returncode=2)


Server = TypeVar("Server", bound=HTTPServer)


@contextlib.contextmanager
def serving(server: Server) -> Iterator[Server]:
    """A loopback HTTP server answering in a thread of its own until the block ends."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def read_terminal(terminal: int, into: list[bytes]) -> None:
    """What a command writes to its pty, chunk by chunk, until its side is closed (a thread's target)."""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the command's side is closed
            return
        if not chunk:
            return
        into.append(chunk)


@pytest.fixture(scope="session")
def test_guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every wasm/testguests/*.c, compiled once per session."""
    out = tmp_path_factory.mktemp("testguests")
    return {
        source.stem: compile_guest(source, out / f"{source.stem}.wasm")
        for source in sorted((ROOT / "wasm" / "testguests").glob("*.c"))
    }


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory) -> WasmHost:
    wasm_host = WasmHost(tmp_path_factory.mktemp("module-cache"))
    yield wasm_host
    wasm_host.close()


def run_guest(
    host: WasmHost,
    wasm: Path,
    *args: str,
    stdin: bytes = b"",
    preopens: tuple[Preopen, ...] = (),
    env: tuple[tuple[str, str], ...] = (),
    limits: GuestLimits | None = None,
) -> GuestResult:
    guest = host.load_guest_file(wasm)
    call = GuestCall(limits=limits or GuestLimits())
    return host.run(guest, list(args), call=call, stdin=stdin, preopens=preopens, env=env)


def put_shared_model(store: LocalStore, name: str) -> None:
    labels_file = MODELS / name / "labels.txt"
    labels = labels_file.read_text().splitlines() if labels_file.exists() else None
    store.put(name, (MODELS / name / "model.tflite").read_bytes(), labels)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    """A local store holding every model in ../shared/models under its folder's name."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    for model_dir in sorted(MODELS.iterdir()):
        put_shared_model(store, model_dir.name)
    return store


@pytest.fixture(scope="session")
def classifier(model_store: LocalStore) -> Classifier:
    instance = Classifier(Settings(store_dir=model_store.root), store=model_store)
    yield instance
    instance.close()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build daprd and the CLI (and install redis-server) before the first real-Dapr test, and
    install chromium before the first browser test, once.

    A warm cache makes this a no-op; a cold one builds from the Go module proxy (a few minutes).
    """
    if any(item.get_closest_marker("dapr") for item in session.items):
        sys.path.insert(0, str(ROOT))
        from tools.dapr import InstallError, install

        try:
            install()
        except InstallError as exc:
            pytest.exit(f"the real Dapr runtime could not be installed: {exc}", returncode=3)
    if any(item.get_closest_marker("browser") for item in session.items):
        # Debian's chromium for the UI tests (Playwright's own download does not work here).
        sys.path.insert(0, str(ROOT))
        from tools.browser import InstallError as BrowserInstallError
        from tools.browser import install as install_browser

        try:
            install_browser()
        except BrowserInstallError as exc:
            pytest.exit(f"the browser for the UI tests could not be installed: {exc}", returncode=3)
