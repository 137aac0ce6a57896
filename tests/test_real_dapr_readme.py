"""The README's "Running with Dapr", "Calling it" and pub/sub commands, run as a user runs them.

The real Dapr CLI runs `dapr run -f .` from the project root (dapr.yaml, its fixed ports: app
50051, sidecar gRPC 50001 / HTTP 3500) beside a Redis on 6379, as `dapr init` would provide it.
The commands are read from the README's fenced blocks and run verbatim through bash; each
`console` block's shown output is what the command must print (`...` stands for anything; times,
ids, ports of throw-away sidecars and the checkout's path are normalised). So the README and this
test cannot drift.

Fixed ports: if any is taken, or another daprd of app id `image-classifier` runs on this machine
(`dapr invoke` and `dapr publish` would reach the first one), the tests fail saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from real_dapr import dapr_install, wait_for

pytestmark = pytest.mark.dapr

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"
BIRD = SHARED / "images" / "classify" / "bird.jpg"
APP_ID = "image-classifier"
FIXED_PORTS = {
    6379: "Redis (components/*.yaml: localhost:6379)",
    50051: "the app (dapr.yaml appPort)",
    50001: "the sidecar's gRPC API (dapr.yaml daprGRPCPort)",
    3500: "the sidecar's HTTP API (dapr.yaml daprHTTPPort)",
    50052: "the README's results subscriber",
}


# --- the README --------------------------------------------------------------------------------


def section(title: str) -> str:
    """The README text under the heading `title`, up to the next heading of its level or above
    (headings inside fenced blocks are code comments, not headings)."""
    lines = README.read_text().splitlines()
    out: list[str] = []
    level = 0
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"(#+) (.*)", line) if not fenced else None
        if heading and level and len(heading.group(1)) <= level:
            break
        if level:
            out.append(line)
        elif heading and heading.group(2).strip() == title:
            level = len(heading.group(1))
    assert level, f"README has no section {title!r}"
    return "\n".join(out)


def blocks(text: str, lang: str | None = None) -> list[str]:
    found = re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S)
    return [body for kind, body in found if lang is None or kind == lang]


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)


def console_steps(block: str) -> list[Step]:
    """`$ command` lines and the output shown under each."""
    steps: list[Step] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append(Step(line[2:]))
        elif line.strip():
            assert steps, f"output before any command in {block!r}"
            steps[-1].expected.append(line)
    return steps


def find_step(steps: list[Step], prefix: str) -> Step:
    matching = [s for s in steps if s.command.startswith(prefix)]
    assert len(matching) == 1, f"README: one command starting {prefix!r} expected, found {matching}"
    return matching[0]


# --- matching output against the README -------------------------------------------------------

_NORMALISE = [
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"), "<time>"),  # Python logging
    (re.compile(r'"(elapsed_ms|loaded_at)": ?[0-9.]+'), r'"\1": <n>'),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    # the free ports `dapr run` picks for a sidecar of its own (not dapr.yaml's fixed ones)
    (
        re.compile(r"with id (?!image-classifier\b)(\S+)\. HTTP Port: \d+\. gRPC Port: \d+"),
        r"with id \1. <ports>",
    ),
    (re.compile(r" {2,}"), "  "),  # table columns: widths follow the longest cell
]


def normalise(line: str, root: str) -> str:
    line = line.rstrip().replace(root, "<root>")
    for pattern, replacement in _NORMALISE:
        line = pattern.sub(replacement, line)
    return line


def _pattern(expected: str) -> re.Pattern[str]:
    line = normalise(expected, "/work/main")  # the checkout the README's paths show
    return re.compile(".*".join(re.escape(part) for part in line.split("...")))


def assert_shows(expected: list[str], output: str, what: str, *, ordered: bool = True) -> None:
    """Every line the README shows (but a bare `...`) matches a line of the output, in order."""
    actual = [normalise(line, str(ROOT)) for line in output.splitlines()]
    position = 0
    for line in expected:
        if line.strip() == "...":
            continue
        pattern = _pattern(line)
        start = position if ordered else 0
        for index in range(start, len(actual)):
            if pattern.fullmatch(actual[index]):
                position = index + 1
                break
        else:
            raise AssertionError(
                f"{what}: the README shows\n  {line}\nbut the output has no such line"
                f"{' after the previous one' if ordered else ''}:\n{output[-6000:]}"
            )


def shows(expected: list[str], output: str, *, ordered: bool = True) -> bool:
    try:
        assert_shows(expected, output, "", ordered=ordered)
    except AssertionError:
        return False
    return True


# --- processes ---------------------------------------------------------------------------------


def port_taken(port: int) -> str | None:
    """Why `port` cannot be bound as the servers bind it (None: it can)."""
    with socket.socket() as probe:
        # as the servers bind: connections in TIME_WAIT do not count, a listener does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def check_fixed_ports(wait_s: float = 60.0) -> None:
    """Each fixed port free, waiting up to `wait_s` for it: a busy machine's outgoing connections
    take ephemeral ports (32768-60999 holds 50052) for a moment; a listener stays, and is named."""
    deadline = time.monotonic() + wait_s
    for port, what in FIXED_PORTS.items():
        while (taken := port_taken(port)) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        if taken is not None:
            holders = subprocess.run(
                ["ss", "-Htanp", f"sport = :{port}"], capture_output=True, text=True, check=False
            ).stdout.strip()
            pytest.fail(
                f"port {port} ({what}) is taken ({taken}): this test needs it free; "
                f"sockets on it: {holders or 'none listed'}",
                pytrace=False,
            )


def user_env(tmp: Path) -> dict[str, str]:
    """A user's shell after the README's setup block: its `eval "$(python -m tools.dapr env)"`
    line run by bash, on top of this environment without any DAPR_/APP_/CLASSIFIER_ setting."""
    setup = setup_block()
    eval_line = next(line for line in setup if line.startswith("eval "))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "APP_", "CLASSIFIER_"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    base["HOME"] = os.environ.get("HOME", str(tmp))
    done = subprocess.run(
        ["bash", "-c", f"{eval_line}\nenv -0"], cwd=ROOT, env=base, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    env = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    assert Path(env["DAPR_RUNTIME_PATH"], ".dapr", "bin", "daprd").exists(), env["DAPR_RUNTIME_PATH"]
    assert shutil.which("dapr", path=env["PATH"]), env["PATH"]
    return env


def setup_block() -> list[str]:
    text = section("Running with Dapr")
    setup = next(b for b in blocks(text, "sh") if "tools.dapr install" in b)
    return [line for line in setup.splitlines() if line.strip()]


def run(command: str, env: dict[str, str], *, cwd: Path = ROOT, timeout: float = 180) -> tuple[int, str]:
    """One README command through bash, in a process group of its own (`dapr run` starts a
    daprd): stdout and stderr together, as a terminal shows them."""
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        raise AssertionError(
            f"{command!r} did not finish within {timeout} s:\n{out.decode(errors='replace')}"
        ) from None
    return process.returncode, out.decode(errors="replace")


def apply_export(command: str, env: dict[str, str]) -> None:
    words = shlex.split(command, comments=True)
    assert words[0] == "export", command
    for word in words[1:]:
        name, _, value = word.partition("=")
        env[name] = value


def dapr_list(env: dict[str, str]) -> list[dict]:
    done = subprocess.run(["dapr", "list", "-o", "json"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout or "[]")


def check_no_other_sidecar(env: dict[str, str]) -> None:
    others = [a for a in dapr_list(env) if a.get("appId") == APP_ID]
    if others:
        pytest.fail(
            f"another daprd of app id {APP_ID} runs (pids {[a['daprdPid'] for a in others]}): "
            "`dapr invoke --app-id` and `dapr publish` would reach the first one found, not this test's"
        )


def processes(*words: str) -> dict[int, str]:
    """Live processes (not zombies) whose command line has all of `words`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if state == "Z" or not args or not args[0]:
                continue
            line = " ".join(a.decode(errors="replace") for a in args if a)
            if all(word in line for word in words):
                found[int(entry.name)] = line
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def http(method: str, path: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:3500{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class DaprRun:
    """`dapr run -f .` as the README runs it, in a process group of its own (as a terminal's
    foreground job is): Ctrl-C is SIGINT to that group."""

    process: subprocess.Popen
    log: Path
    app: dict = field(default_factory=dict)  # its `dapr list -o json` entry

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> list[int]:
        return [p for p in (self.process.pid, self.app.get("daprdPid"), self.app.get("appPid")) if p]


@contextlib.contextmanager
def redis_from_readme(tmp: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    line = next(line for line in setup_block() if line.startswith("redis-server"))
    words = shlex.split(line, comments=True)
    assert words[-1] == "&", line
    log = (tmp / "redis.log").open("wb")
    process = subprocess.Popen(words[:-1], cwd=tmp, env=env, stdout=log, stderr=log, process_group=0)
    try:
        wait_for(lambda: _accepts(6379) or process.poll() is not None, 20, "redis-server did not listen")
        assert process.poll() is None, (tmp / "redis.log").read_text()
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def dapr_run_f(tmp: Path, env: dict[str, str]) -> Iterator[DaprRun]:
    text = section("Running with Dapr")
    command = next(
        line.split("#")[0].strip()
        for b in blocks(text, "sh")
        for line in b.splitlines()
        if line.startswith("dapr run -f .")
    )
    assert command == "dapr run -f ."
    log = tmp / f"dapr-run-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            shlex.split(command), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, process_group=0
        )
    running = DaprRun(process, log)
    try:
        entry = wait_for(
            lambda: (
                (
                    process.poll() is None
                    and next((a for a in dapr_list(env) if a["cliPid"] == process.pid), None)
                )
                or (process.poll() is not None and {"exited": process.returncode})
            ),
            60,
            "`dapr run -f .` never showed in `dapr list`",
            interval=0.5,
        )
        assert "exited" not in entry, f"dapr run -f . exited with {entry}:\n{running.output()}"
        running.app = entry
        yield running
    finally:
        leftovers = [p for p in running.pids() if alive(p)]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.wait(30)
        for key in ("appLogPath", "daprdLogPath"):  # .dapr/logs/ is ignored by git, but grows
            if running.app.get(key):
                Path(running.app[key]).unlink(missing_ok=True)


def wait_stopped(running: DaprRun, env: dict[str, str], timeout: float = 60) -> int:
    code = running.process.wait(timeout)
    wait_for(
        lambda: not any(alive(p) for p in running.pids()),
        timeout,
        f"daprd or the app still ran after `dapr run` exited: {[p for p in running.pids() if alive(p)]}",
    )
    assert not [a for a in dapr_list(env) if a.get("appId") == APP_ID], "dapr list still shows the app"
    return code


def wait_models(version: int) -> dict:
    def ready():
        with contextlib.suppress(OSError):
            status, body = http("GET", f"/v1.0/invoke/{APP_ID}/method/models")
            if status == 200:
                models = json.loads(body)
                birds = [m for m in models["models"] if m["name"] == "birds"]
                if birds and birds[0]["version"] == version and birds[0]["ready"]:
                    return models
        return None

    return wait_for(ready, 90, f"the app did not serve birds v{version} through daprd", interval=0.5)


# --- the tests ---------------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path) -> Iterator[dict[str, str]]:
    dapr_install()  # warm: the README's `python -m tools.dapr install` is then a quick no-op
    env = user_env(tmp_path)
    check_fixed_ports()
    check_no_other_sidecar(env)
    install = next(line for line in setup_block() if line.startswith("python -m tools.dapr install"))
    code, out = run(install.split("#")[0], env)
    assert code == 0, out
    assert "daprd 1.18.3" in out and "redis-server" in out, out
    # `pip install -e .`: this checkout is what `classifier` runs (not reinstalled here)
    running = subprocess.run(
        ["python", "-c", "import service, sys; print(service.__file__)"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert Path(running.stdout.strip()).resolve().is_relative_to(ROOT), running
    assert shutil.which("classifier", path=env["PATH"]), env["PATH"]
    yield env
    Path("/tmp/bird.json").unlink(missing_ok=True)


def test_readme_running_calling_publishing_then_dapr_stop(prepared: dict[str, str], tmp_path: Path) -> None:
    env = prepared
    running_text = section("Running with Dapr")
    calling_text = section("Calling it")
    pubsub_text = section("Pub/sub")
    consoles = blocks(running_text, "console")
    lifecycle = console_steps(next(b for b in consoles if "$ dapr list" in b))
    uploads = [s for b in consoles if "models put" in b for s in console_steps(b)]
    calls = console_steps(blocks(calling_text, "console")[0])
    publishing = console_steps(next(b for b in blocks(pubsub_text, "console") if "dapr publish" in b))
    started = next(b for b in blocks(running_text, "") if "Validating config" in b).splitlines()

    with redis_from_readme(tmp_path, env), dapr_run_f(tmp_path, env) as running:
        # what `dapr run -f .` prints while the app waits for a model (lines of two writers: any order)
        wait_for(lambda: shows(started, running.output(), ordered=False), 60, "dapr run -f . never printed")
        assert_shows(started, running.output(), "dapr run -f .", ordered=False)

        step = find_step(lifecycle, "dapr list")
        code, out = run(step.command, env)
        assert code == 0, out
        assert_shows(step.expected, out, step.command)
        assert running.app["appPort"] == 50051 and running.app["httpPort"] == 3500
        assert running.app["grpcPort"] == 50001 and running.app["runTemplatePath"] == str(ROOT / "dapr.yaml")

        # no model yet: the app is unhealthy, and daprd says so
        status, body = http("POST", f"/v1.0/invoke/{APP_ID}/method/models")
        shown_body = re.search(r'`(\{"errorCode":"ERR_DIRECT_INVOKE".*?\})`', calling_text)
        assert status == 500 and shown_body and json.loads(body) == json.loads(shown_body.group(1)), body
        code, out = run(find_step(calls, "dapr invoke --app-id image-classifier --method m").command, env)
        shown_line = re.search(r"`(❌  error invoking app [^`]*)`", calling_text.replace("\n", " "))
        assert code == 1 and shown_line and out.strip() == shown_line.group(1), out

        for step in uploads:
            if step.command.startswith("#"):
                continue
            if step.command.startswith("export "):
                apply_export(step.command, env)
                continue
            code, out = run(step.command, env)
            assert code == 0, f"{step.command}\n{out}"
            assert_shows(step.expected, out, step.command)
            assert "Traceback" not in out, out
        # the version the README's calls show (the second upload has the first one's bytes and
        # labels: it stores nothing, so 1), once the service has it
        shown_version = re.search(r'"version": (\d+)', calling_text)
        assert shown_version and any("is already stored" in line for s in uploads for line in s.expected)
        wait_models(int(shown_version.group(1)))
        assert not processes("classifier", "models put"), "an uploader outlived its `dapr run`"
        assert not processes("daprd", "--app-id uploader"), "the uploader's daprd outlived its `dapr run`"

        for step in calls:
            code, out = run(step.command, env)
            assert code == 0, f"{step.command}\n{out}"
            assert_shows(step.expected, out, step.command)

        # the Python client snippet, as a script next to an image of its own named bird.jpg
        snippet = blocks(calling_text, "python")[0]
        shown = re.search(r"print\(.*\)  # (.*)$", snippet, flags=re.M)
        assert shown, "the snippet shows what it prints"
        (tmp_path / "bird.jpg").symlink_to(BIRD)
        (tmp_path / "invoke_snippet.py").write_text(snippet)
        code, out = run(f"{shlex.quote(sys.executable)} invoke_snippet.py", env, cwd=tmp_path)
        assert code == 0, out
        assert_shows([shown.group(1)], out, "the Python invoke snippet")

        # pub/sub: classifier publish, the Python publish snippet, dapr publish, then the results
        # through the README's subscriber (saved as results.py)
        publish_snippet, subscriber = blocks(pubsub_text, "python")[:2]
        step = find_step(publishing, "classifier publish")
        code, out = run(step.command, env)
        assert code == 0, out
        assert_shows(step.expected, out, step.command)
        event_id = re.search(r"as event (\S+)", out).group(1)

        (tmp_path / "publish_snippet.py").write_text(publish_snippet)
        code, out = run(f"{shlex.quote(sys.executable)} publish_snippet.py", env, cwd=tmp_path)
        assert code == 0 and not out.strip(), out

        for prefix in ("printf", "dapr publish"):
            step = find_step(publishing, prefix)
            code, out = run(step.command, env)
            assert code == 0, f"{step.command}\n{out}"
            assert_shows(step.expected, out, step.command)

        step = find_step(publishing, "dapr run --app-id results")
        assert step.command.endswith(" python results.py"), step.command
        (tmp_path / "results.py").write_text(subscriber)
        results = _run_subscriber(step, env, tmp_path)
        assert f"== APP == {event_id} [{{'index': 166, 'label': 'Aix galericulata'" in results, results
        assert "== APP == bird-1 [{'index': 166, 'label': 'Aix galericulata'" in results, results
        # one result per event (Ctrl-C then ends the snippet's app.run() in a KeyboardInterrupt)
        lines = [line for line in results.splitlines() if re.match(r"== APP == \S+ \[\{'index'", line)]
        assert len(lines) == 3, results

        # the app's log lines, as `dapr run -f .` shows them: no traceback
        assert "Traceback" not in running.output(), running.output()[-4000:]

        step = find_step(lifecycle, "dapr stop -f .")
        code, out = run(step.command, env)
        assert code == 0, out
        assert_shows(step.expected, out, step.command)
        exit_code = wait_stopped(running, env)
        assert exit_code == 0, running.output()[-3000:]
        assert not _accepts(3500) and not _accepts(50001) and not _accepts(50051)


def _subscriber_done(text: str) -> bool:
    results = re.findall(r"^== APP == \S+ \[", text, flags=re.M)
    return len(results) >= 3 and "You're up and running!" in text


def _run_subscriber(step: Step, env: dict[str, str], tmp: Path) -> str:
    """The README's subscriber under `dapr run` until it printed the three results, then Ctrl-C."""
    command = step.command.replace(
        " python results.py", f" {shlex.quote(sys.executable)} {tmp / 'results.py'}"
    )
    log = tmp / "results.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    try:
        wait_for(
            # Ctrl-C before the CLI's start-up is over (it prints "up and running" last) hangs it
            lambda: _subscriber_done(log.read_text(errors="replace")) or process.poll() is not None,
            90,
            lambda: "the subscriber did not print three results:\n" + log.read_text(errors="replace")[-4000:],
        )
        text = log.read_text(errors="replace")
        assert_shows(step.expected, text, step.command, ordered=False)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(30) == 0, log.read_text(errors="replace")
        return log.read_text(errors="replace")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in processes("daprd", "--app-id results"):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_stops_dapr_run_f(prepared: dict[str, str], tmp_path: Path) -> None:
    env = prepared
    with redis_from_readme(tmp_path, env), dapr_run_f(tmp_path, env) as running:
        wait_for(lambda: _accepts(50051) and _accepts(3500), 60, "the app and daprd did not listen")
        daprd, app = running.app["daprdPid"], running.app["appPid"]
        assert alive(daprd) and alive(app)
        os.killpg(running.process.pid, signal.SIGINT)  # Ctrl-C in the terminal `dapr run` runs in
        exit_code = wait_stopped(running, env)
        output = running.output()
        assert exit_code == 0, output[-3000:]
        assert "Received signal to stop Dapr and app processes" in output, output[-3000:]
        # the CLI's own account of the stop goes to daprd's log file, not the terminal
        daprd_log = Path(running.app["daprdLogPath"]).read_text(errors="replace")
        assert "Exited Dapr successfully\nExited App successfully" in daprd_log, daprd_log[-2000:]
        assert not alive(daprd) and not alive(app)
        assert not _accepts(3500) and not _accepts(50001) and not _accepts(50051)


@pytest.mark.parametrize(
    "command",
    [
        "invoke ../shared/images/classify/bird.jpg --model birds",
        "publish ../shared/images/classify/bird.jpg --model birds",
        "models put birds ../shared/models/aiy_birds_v1/model.tflite",
        "models list",
    ],
)
def test_cli_without_a_sidecar_fails_in_one_line(command: str, tmp_path: Path) -> None:
    """DAPR_GRPC_PORT set, no sidecar there: one line on stderr within seconds, not DaprClient's
    60 s health wait (a line a second on stdout) ending in a TimeoutError traceback."""
    from service.demo import free_port

    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "APP_", "CLASSIFIER_"))}
    env.update(DAPR_HTTP_PORT=str(http_port), DAPR_GRPC_PORT=str(grpc_port), CLASSIFIER_STORE=str(tmp_path))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "service", *shlex.split(command)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    errors = [line for line in done.stderr.splitlines() if not line.startswith("INFO: Created TensorFlow")]
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == "", done.stdout
    assert errors == [
        f"classifier: no Dapr sidecar answered at http://127.0.0.1:{http_port}/v1.0 within 5 s "
        "(Connection refused): "
        "start one with `dapr run`, or point DAPR_HTTP_PORT and DAPR_GRPC_PORT at yours"
    ], done.stderr
    assert elapsed < 40, elapsed  # not the SDK's 60 s (the wait itself is 5 s)
