"""First use off the happy path (issue 17): every command, run as the real `classifier` console
command (and `python -m bench`), with no store, an empty store, missing, unreadable and wrong files,
unknown names, no sidecar, a silent one, one gone after its health check, bad settings and Ctrl-C.
Each ends with one line saying what is wrong and what to do, and a non-zero exit code; none hangs
(the subprocess timeout fails the test), none prints a traceback."""

from __future__ import annotations

import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import IMAGES, MODELS, ROOT, put_shared_model, read_terminal, serving
from real_dapr import free_port, wait_for

from service.stores.local import LocalStore

CLASSIFIER = Path(sys.executable).with_name("classifier")  # the console script of this install
BIRDS = MODELS / "aiy_birds_v1"
IMAGE = IMAGES / "classify" / "bird.jpg"
GUEST = ROOT / "wasm" / "bin" / "classify.wasm"
TIMEOUT_S = 90  # a generous guard: a command that hangs fails here instead of blocking the run
LITERT_NOTE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."  # LiteRT's own stderr line


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wrong files a new user gives: missing, a directory, a broken link, a pipe nobody
    writes to, text, a truncated model; and a store holding birds, and an empty one."""
    root = tmp_path_factory.mktemp("first-use")
    (root / "notes.txt").write_text("hello\n")
    (root / "notes.wasm").write_text("hello\n")
    (root / "adir").mkdir()
    (root / "broken").symlink_to(root / "gone")
    os.mkfifo(root / "fifo")
    (root / "truncated.tflite").write_bytes((BIRDS / "model.tflite").read_bytes()[:100_000])
    put_shared_model(LocalStore(root / "store"), "aiy_birds_v1")
    return {
        "root": root,
        "store": root / "store",
        "empty": root / "empty",
        "missing": root / "missing.jpg",
        "text": root / "notes.txt",
        "text_wasm": root / "notes.wasm",
        "dir": root / "adir",
        "broken": root / "broken",
        "fifo": root / "fifo",
        "truncated": root / "truncated.tflite",
        "model": BIRDS / "model.tflite",
        "image": IMAGE,
        "guest": GUEST,
    }


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def failure_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one line a failed command ends with; before it, only an upload's last progress line
    (progress while waiting is shown on a terminal only: see interrupt_when_waiting)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line != LITERT_NOTE]
    assert lines, "no line on stderr"
    *before, last = lines
    assert all(line.startswith("uploading ") for line in before), lines
    return last


# (case, argv with {file} placeholders, what the one line says; exit code 1 unless given)
CASES: list[tuple[str, str, str]] = [
    ("models put, no such file", "models put birds {missing}", "cannot read {missing}: no such file"),
    (
        "models put, a directory",
        "models put birds {dir}",
        "cannot read {dir}: it is a directory; give a file",
    ),
    ("models put, a broken link", "models put birds {broken}", "it is a symbolic link to"),
    ("models put, a pipe nobody writes", "models put birds {fifo}", "nothing was written to it for 5 s"),
    ("models put, a text file", "models put birds {text}", "birds: not a usable TFLite model"),
    ("models put, a truncated model", "models put birds {truncated}", "birds: not a usable TFLite model"),
    ("models put, binary labels", "models put birds {model} --labels {model}", "not UTF-8 text"),
    ("models put, labels a directory", "models put birds {model} --labels {dir}", "it is a directory"),
    ("models put, a bad name", "models put a/b {model}", "invalid name 'a/b'"),
    ("models rm, unknown", "models rm nosuch", "model 'nosuch' not found"),
    ("guests put, a text file", "guests put g {text}", "g: not a valid wasm module: it does not start with"),
    ("guests put, a model", "guests put g {model}", "g: not a valid wasm module: it does not start with"),
    ("guests put, a bad template", "guests put g {guest} --args {{nope}}", "unknown guest args placeholder"),
    ("guests rm, unknown", "guests rm nosuch", "guest 'nosuch' not found"),
    (
        "classify, an empty store",
        "--store {empty} classify {image} --model birds",
        "store it with `classifier models put birds MODEL.tflite`",
    ),
    ("classify, an image directory", "classify {dir} --model aiy_birds_v1", "it is a directory"),
    ("classify, a text image", "classify {text} --model aiy_birds_v1", "could not be decoded"),
    ("classify, a pipe nobody writes", "classify {fifo} --model aiy_birds_v1", "nothing was written"),
    (
        "classify, top-k 0",
        "classify {image} --model aiy_birds_v1 --top-k 0",
        "top_k must be an integer from 1",
    ),
    ("classify, a bad model name", "classify {image} --model a/b", "invalid name 'a/b'"),
    ("classify, a text guest", "classify {image} --model aiy_birds_v1 --guest {text_wasm}", "does not start"),
    (
        "classify, a guest without .wasm",
        "classify {image} --model aiy_birds_v1 --guest {model}",
        "ends in .wasm",
    ),
    (
        "classify, --guest-args alone",
        "classify {image} --model aiy_birds_v1 --guest-args {{image_path}}",
        "the embedded guest takes no args template",
    ),
    ("wasm run, no such guest", "wasm run {missing}", "cannot read guest"),
    ("wasm run, a text guest", "wasm run {text}", "the guest {text}: not a valid wasm module"),
    ("wasm run, a directory guest", "wasm run {dir}", "cannot read guest {dir}: Is a directory"),
    (
        "wasm run, a text model preloaded",
        "wasm run --nn-preload m:TensorflowLite:CPU:{text} {guest}",
        "--nn-preload m: {text}: not a usable TFLite model",
    ),
    (
        "wasm run, a missing model preloaded",
        "wasm run --nn-preload m:TFLite:CPU:{missing} {guest}",
        "no such file",
    ),
    ("wasm run, a missing --dir", "wasm run --dir /d:{missing} {guest}", "is not a directory"),
    ("demo, an empty store", "--store {empty} demo {image} --model birds", "not found"),
    ("demo, an image directory", "demo {dir} --model aiy_birds_v1", "cannot read {dir}: it is a directory"),
]


@pytest.mark.parametrize(("argv", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_wrong_input_is_one_line_and_exit_1(files: dict[str, Path], argv: str, expected: str) -> None:
    names = {k: str(v) for k, v in files.items()}
    command = [str(CLASSIFIER), *[part.format(**names) for part in argv.split()]]
    env = clean_env(CLASSIFIER_STORE=str(files["store"]), CLASSIFIER_CACHE_DIR=str(files["root"] / "cache"))
    last = failure_line(run(command, env, files["root"]))
    assert last.startswith("classifier: ") and expected.format(**names) in last, last


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ("wasm run --timeout -1 {guest}", "argument --timeout: '-1': give a number of seconds above 0"),
        ("serve --port 99999", "argument --port: '99999' is not a port number (0-65535)"),
    ],
)
def test_a_wrong_option_is_a_usage_error(files: dict[str, Path], argv: str, expected: str) -> None:
    command = [str(CLASSIFIER), *argv.format(guest=GUEST).split()]
    result = run(command, clean_env(), files["root"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(expected), result.stderr


def test_an_unreadable_file_as_another_user(files: dict[str, Path], tmp_path: Path) -> None:
    """Root reads any file: the command runs as `nobody` to meet a permission error."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run as nobody")
    secret = tmp_path / "secret.tflite"
    secret.write_bytes(b"x")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    command = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(CLASSIFIER)]
    env = clean_env(CLASSIFIER_STORE=str(tmp_path / "store"))
    # nobody cannot write the coverage data of a measured run (.ci/run): not measured, then
    env = {k: v for k, v in env.items() if not k.startswith("COVERAGE_")}
    last = failure_line(run([*command, "models", "put", "m", str(secret)], env, tmp_path))
    assert last == (
        f"classifier: cannot read {secret}: "
        "permission denied (check the permissions of it and its directories)"
    )


def test_an_empty_list_is_not_an_error(files: dict[str, Path]) -> None:
    for kind in ("models", "guests"):
        result = run(
            [str(CLASSIFIER), kind, "list"], clean_env(CLASSIFIER_STORE=str(files["empty"])), files["root"]
        )
        assert (result.returncode, result.stdout) == (0, "")
        assert result.stderr == f"no {kind} in {files['empty']}: store one with `classifier {kind} put`\n"


def test_serve_on_a_port_in_use(files: dict[str, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(CLASSIFIER_STORE=str(files["store"]), APP_PORT=str(port))
        last = failure_line(run([str(CLASSIFIER), "serve"], env, files["root"]))
    assert last == (
        f"classifier: cannot listen on 127.0.0.1:{port}: Address already in use: "
        "choose another port with --port or APP_PORT"
    )


def test_a_port_a_stopped_server_just_used_is_free() -> None:
    """A restart on the same port (dapr run, Kubernetes) right after a stop: the stopped server's
    connections wait in TIME_WAIT on the port, which must not read as "in use" (seen in CI)."""
    from service.cli import _check_port_free

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        with pytest.raises(OSError, match="Address already in use"):
            _check_port_free("127.0.0.1", port)  # listening: in use
        accepted.close()  # the server closes first: its side of the connection is in TIME_WAIT
        client.recv(1)
        client.close()
    _check_port_free("127.0.0.1", port)  # no listener left: free, TIME_WAIT or not


@pytest.mark.parametrize(
    ("variable", "value", "commands", "expected"),
    [
        ("CLASSIFIER_POLL_S", "0", ["serve"], "CLASSIFIER_POLL_S='0': must be more than 0"),
        ("CLASSIFIER_TIMEOUT_S", "x", ["classify", "wasm"], "CLASSIFIER_TIMEOUT_S='x': not a number"),
        (
            "DAPR_GRPC_PORT",
            "abc",
            ["models", "invoke"],
            "DAPR_GRPC_PORT='abc': must be a port number (1-65535)",
        ),
        ("DAPR_HTTP_PORT", "70000", ["invoke", "publish"], "DAPR_HTTP_PORT='70000': must be a port number"),
        (
            "DAPR_HEALTH_TIMEOUT",
            "soon",
            ["invoke"],
            "DAPR_HEALTH_TIMEOUT='soon': must be a number of seconds > 0",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    files: dict[str, Path], variable: str, value: str, commands: list[str], expected: str
) -> None:
    argv = {
        "serve": ["serve"],
        "classify": ["classify", str(IMAGE), "--model", "aiy_birds_v1"],
        "wasm": ["wasm", "run", str(GUEST)],
        "models": ["models", "list"],
        "guests": ["guests", "list"],
        "invoke": ["invoke", str(IMAGE)],
        "publish": ["publish", str(IMAGE)],
    }
    env = clean_env(CLASSIFIER_STORE=str(files["store"]), APP_PORT="0", **{variable: value})
    for command in commands:
        last = failure_line(run([str(CLASSIFIER), *argv[command]], env, files["root"]))
        assert last.startswith(f"classifier: {expected}"), (command, last)


# -- sidecars that do not help: none, a silent one, one whose API is gone after its health check ---------


@pytest.fixture
def silent_sidecar() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", free_port()))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # /v1.0/healthz/outbound, as daprd answers it: 204
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET  # an invocation "answered" with nothing: not this service's JSON

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def gone_sidecar() -> Iterator[dict[str, str]]:
    """A sidecar whose health check passes but whose gRPC API is gone (nothing listens there)."""
    with serving(ThreadingHTTPServer(("127.0.0.1", free_port()), _Healthy)) as server:
        yield {"DAPR_HTTP_PORT": str(server.server_address[1]), "DAPR_GRPC_PORT": str(free_port())}


SIDECAR_COMMANDS = [
    ["models", "list"],
    ["models", "put", "birds", str(BIRDS / "model.tflite")],
    ["guests", "list"],
    ["invoke", str(IMAGE)],
    ["publish", str(IMAGE)],
]


@pytest.mark.parametrize("command", SIDECAR_COMMANDS, ids=" ".join)
def test_no_sidecar(files: dict[str, Path], command: list[str]) -> None:
    port = str(free_port())
    env = clean_env(DAPR_HTTP_PORT=port, DAPR_GRPC_PORT=port)
    last = failure_line(run([str(CLASSIFIER), *command], env, files["root"]))
    assert last.startswith(
        f"classifier: no Dapr sidecar answered at http://127.0.0.1:{port}/v1.0 within 5 s ("
    ), last
    assert "Connection refused" in last and last.endswith("point DAPR_HTTP_PORT and DAPR_GRPC_PORT at yours")


@pytest.mark.parametrize("command", SIDECAR_COMMANDS, ids=" ".join)
def test_a_silent_sidecar(files: dict[str, Path], silent_sidecar: int, command: list[str]) -> None:
    env = clean_env(DAPR_HTTP_PORT=str(silent_sidecar), DAPR_GRPC_PORT=str(silent_sidecar))
    last = failure_line(run([str(CLASSIFIER), *command], env, files["root"]))
    assert last.startswith(
        f"classifier: no Dapr sidecar answered at http://127.0.0.1:{silent_sidecar}/v1.0"
    ), last
    assert "timed out" in last, last


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["models", "list"], "state store 'statestore' unavailable"),
        (["models", "rm", "birds"], "state store 'statestore' unavailable"),
        (["guests", "list"], "state store 'statestore' unavailable"),
        (["publish", str(IMAGE)], "not published: unavailable"),
        (["invoke", str(IMAGE)], "the answer is not the service's JSON (b'')"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_a_sidecar_gone_after_its_health_check(
    files: dict[str, Path], gone_sidecar: dict[str, str], command: list[str], expected: str
) -> None:
    last = failure_line(run([str(CLASSIFIER), *command], clean_env(**gone_sidecar), files["root"]))
    assert expected in last, last
    if command[0] in ("models", "guests"):
        assert last.endswith(
            f"is the Dapr sidecar (DAPR_GRPC_PORT={gone_sidecar['DAPR_GRPC_PORT']}) still running?"
        )


# -- Ctrl-C in the middle of a long wait: progress shown, then exit 130 ----------------------------------


def interrupt_when_waiting(argv: list[str], env: dict[str, str], cwd: Path, progress: str) -> tuple[int, str]:
    """Start the command with stderr on a terminal (progress is for people: shown on a terminal
    only), wait for its progress line, send SIGINT as Ctrl-C does; the exit code and stderr."""
    terminal, command_side = pty.openpty()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=command_side)  # fmt: skip
    os.close(command_side)
    seen: list[bytes] = []

    def text() -> str:
        return b"".join(seen).decode(errors="replace").replace("\r\n", "\n")

    reader = threading.Thread(target=read_terminal, args=(terminal, seen), daemon=True)
    reader.start()
    try:
        wait_for(lambda: progress in text() or process.poll() is not None, 60, progress)
        assert process.poll() is None, text()
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
        reader.join(timeout=30)
        return code, text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(terminal)


def test_ctrl_c_while_waiting_for_a_pipe(files: dict[str, Path]) -> None:
    env = clean_env(CLASSIFIER_STORE=str(files["store"]), CLASSIFIER_CACHE_DIR=str(files["root"] / "cache"))
    argv = [str(CLASSIFIER), "classify", str(files["fifo"]), "--model", "aiy_birds_v1"]
    code, stderr = interrupt_when_waiting(argv, env, files["root"], "waiting for data on")
    assert code == 130 and stderr.splitlines()[-1] == "classifier: interrupted", stderr
    assert "Traceback" not in stderr


def test_ctrl_c_while_waiting_for_a_sidecar(files: dict[str, Path], silent_sidecar: int) -> None:
    port = str(silent_sidecar)
    env = clean_env(DAPR_HTTP_PORT=port, DAPR_GRPC_PORT=port, DAPR_HEALTH_TIMEOUT="60")
    argv = [str(CLASSIFIER), "invoke", str(IMAGE)]
    code, stderr = interrupt_when_waiting(argv, env, files["root"], "waiting for the Dapr sidecar")
    assert code == 130 and stderr.splitlines()[-1] == "classifier: interrupted", stderr
    assert (
        f"waiting for the Dapr sidecar at http://127.0.0.1:{port}/v1.0" in stderr
        and "Traceback" not in stderr
    )


# -- python -m bench and python -m bench.profile -----------------------------------------------------------


@pytest.mark.parametrize("module", ["bench", "bench.profile"])
def test_bench_refuses_an_output_path_that_is_a_file_before_running(
    files: dict[str, Path], module: str
) -> None:
    result = run([sys.executable, "-m", module, "--smoke", "--out", str(files["text"])], clean_env(), ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        f"error: --out {files['text']}: not a directory; give a directory for the results"
    )


@pytest.mark.parametrize("option", ["--rounds", "--per-round"])
def test_bench_refuses_a_count_below_one(option: str) -> None:
    result = run([sys.executable, "-m", "bench", option, "0"], clean_env(), ROOT)
    assert result.returncode == 2 and result.stderr.splitlines()[-1].endswith(
        f"argument {option}: '0': give a whole number, at least 1"
    )


def test_ctrl_c_stops_the_benchmark_and_what_it_started(tmp_path: Path) -> None:
    """Interrupted while it runs `classifier serve`: exit 130, one line, no process of its left."""
    argv = [sys.executable, "-m", "bench", "--smoke", "--no-daprd", "--out", str(tmp_path / "out")]
    process = subprocess.Popen(argv, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        # It runs the service in a child process of its own group: interrupt once that is up.
        def serving() -> bool:
            children = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True)
            return len(children.stdout.split()) > 1 or process.poll() is not None

        wait_for(serving, 120, "the benchmark's service process")
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert stderr.splitlines()[-1] == "bench: interrupted; nothing written" and "Traceback" not in stderr
        assert not (tmp_path / "out" / "results.json").exists()
        left = subprocess.run(
            ["pgrep", "-g", str(process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert left == [], f"processes left running: {left}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def probe_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from build import compile_guest

    out = tmp_path_factory.mktemp("probe")
    return compile_guest(ROOT / "wasm" / "testguests" / "probe.c", out / "probe.wasm")


def test_ctrl_c_stops_a_running_guest(files: dict[str, Path], probe_guest: Path) -> None:
    """`wasm run` gives a guest an hour by default; Ctrl-C stops it at once (wasm runs in native
    code, where Python takes no signal: the guest is interrupted through its deadline)."""
    env = clean_env(CLASSIFIER_CACHE_DIR=str(files["root"] / "cache"))
    argv = [str(CLASSIFIER), "wasm", "run", str(probe_guest), "flood"]
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.read(64)  # the guest runs: it writes
        assert first.startswith(b"flood"), first
        drained = threading.Thread(target=lambda: process.stdout.read(), daemon=True)  # type: ignore[union-attr]
        drained.start()  # keep the pipe open and empty, so the guest never blocks in a write
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
        stderr = process.stderr.read().decode()
        assert (code, stderr.splitlines()[-1]) == (130, "classifier: interrupted"), stderr
        assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
