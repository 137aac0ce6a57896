"""The real Dapr runtime under the product: Redis, daprd and `classifier serve` as real processes.

Everything binds to free loopback ports and is stopped by PID. daprd and the Dapr CLI come from
`python -m tools.dapr install` (built once, cached); Redis is Debian's `redis-server`.

The components daprd loads are the project's own `components/*.yaml`, with only `redisHost`
pointed at the test's Redis, so the tests exercise the shipped files. Name resolution is the
`sqlite` resolver on a file of the test's own (mDNS would let concurrent test runs on one machine
resolve each other's replicas).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.dapr import DaprInstall, install  # noqa: E402

LOOPBACK = "127.0.0.1"
APP_ID = "image-classifier"

# Ports for the processes these tests start: below the kernel's ephemeral range (32768-60999),
# where no outgoing connection can take one between choosing it and binding it, and never the
# same one twice in a run (a bind-to-0 port is free again once released: two free_port() calls
# can return the same port, and daprd then fails with "could not listen on any endpoint").
_PORTS = list(range(20000, 32000))
random.shuffle(_PORTS)
_PORT_LOCK = threading.Lock()


def free_port() -> int:
    """A loopback port no process listens on, handed out once per test run."""
    with _PORT_LOCK:
        while _PORTS:
            port = _PORTS.pop()
            with socket.socket() as probe:
                try:
                    probe.bind((LOOPBACK, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free loopback port left in 20000-32000")


def dapr_install() -> DaprInstall:
    """daprd, the CLI and redis-server, built or installed if missing (a no-op when warm)."""
    return install()


def _wait_port(port: int, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode} before opening port {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not open port {port} within {timeout} s")


def _stop(process: subprocess.Popen, timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def daprd_exiting(log: str) -> bool:
    """Whether daprd's log says it is exiting because a component failed to init."""
    return "daprd will exit gracefully" in log


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.1
) -> Any:
    """Poll `condition` until it returns something truthy (returned) or `timeout` passes;
    `what` (or what it returns) names the condition in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(interval)


class RedisServer:
    """redis-server on a free loopback port, stopped by PID. No persistence unless
    `persistent` (an append-only file in `workdir`, as a production Redis keeps its data:
    then stop() and start() keep the models and the streams)."""

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfilename",
                f"redis-{self.port}.aof",
                "--appenddirname",
                f"redis-{self.port}-aof",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=log,
        )
        _wait_port(self.port, 10, "redis-server", self.process)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5)


def write_resources(target: Path, redis_address: str, *, only: tuple[str, ...] = ()) -> Path:
    """The project's components/*.yaml with redisHost pointed at `redis_address`."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted((ROOT / "components").glob("*.yaml")):
        if only and source.stem not in only:
            continue
        text = source.read_text().replace("localhost:6379", redis_address)
        (target / source.name).write_text(text)
    return target


def write_config(path: Path, nr_db: Path, *, extra_spec: str = "") -> Path:
    """A Configuration with the sqlite name resolver on `nr_db` (shared by the replicas of one test)."""
    path.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: classifier-test\nspec:\n"
        "  nameResolution:\n    component: sqlite\n    configuration:\n"
        f'      connectionString: "{nr_db}"\n{extra_spec}'
    )
    return path


@dataclass
class HttpAnswer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Daprd:
    """A real daprd for one app, on free ports; `start()` waits for its outbound health."""

    workdir: Path
    resources: Path
    config: Path
    app_id: str = APP_ID
    app_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    internal_grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    app_health_check: bool = True
    max_body_size: str = "16Mi"
    extra_args: tuple[str, ...] = ()
    env_extra: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    starts: int = 0
    log_start: int = 0  # where the log of the latest start begins

    @property
    def log_path(self) -> Path:
        return self.workdir / f"daprd-{self.app_id}-{self.http_port}.log"

    def args(self) -> list[str]:
        args = [
            str(dapr_install().daprd),
            "--app-id",
            self.app_id,
            *(("--app-port", str(self.app_port)) if self.app_port else ()),  # 0: a sidecar with no app
            "--app-protocol",
            "grpc",
            "--app-channel-address",
            LOOPBACK,
            "--dapr-http-port",
            str(self.http_port),
            "--dapr-grpc-port",
            str(self.grpc_port),
            "--dapr-internal-grpc-port",
            str(self.internal_grpc_port),
            # Else the sidecar-to-sidecar server binds [::] (--dapr-listen-addresses does not
            # cover it); the sqlite resolver then registers 127.0.0.1, which the replicas reach.
            "--dapr-internal-grpc-listen-address",
            LOOPBACK,
            "--dapr-listen-addresses",
            LOOPBACK,
            "--metrics-port",
            str(self.metrics_port),
            "--resources-path",
            str(self.resources),
            "--config",
            str(self.config),
            "--max-body-size",
            self.max_body_size,
            "--placement-host-address",
            "",
            "--scheduler-host-address",
            "",
            "--log-level",
            "info",
        ]
        if self.app_health_check:
            args += [
                "--enable-app-health-check",
                "--app-health-probe-interval",
                "1",
                "--app-health-threshold",
                "1",
            ]
        return args + list(self.extra_args)

    def start(self, timeout: float = 30.0) -> Daprd:
        log = self.log_path.open("ab")
        self.log_start = log.tell()  # the log is appended to across restarts
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "APP_", "CLASSIFIER_"))}
        env.update(self.env_extra)
        self.process = subprocess.Popen(self.args(), stdout=log, stderr=log, env=env, cwd=self.workdir)
        self.starts += 1
        self.wait_outbound(timeout)
        return self

    def wait_outbound(self, timeout: float = 30.0) -> None:
        """Until daprd's outbound health is 204 and daprd is not on its way out: after a component
        fails to init, daprd 1.18 goes on starting its servers (healthy for ~0.3 s) and only
        then exits, so a 204 alone does not mean it started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daprd exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError):
                if self.http("GET", "/v1.0/healthz/outbound", timeout=1).status == 204:
                    # The line is written before daprd can serve the 204 (the failing component's
                    # processor logs it, then ends, which unblocks the rest of the start-up).
                    if not daprd_exiting(self.log_of_this_start()):
                        return
                    assert self.process is not None
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            time.sleep(0.1)
        raise AssertionError(f"daprd not ready within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self) -> int:
        return _stop(self.process) if self.process is not None else 0

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_of_this_start(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def metrics(self) -> str:
        """daprd's Prometheus metrics (e.g. dapr_service_invocation_req_recv_total)."""
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.read().decode()

    def env(self) -> dict[str, str]:
        """What `dapr run` gives the app process."""
        return {
            "APP_ID": self.app_id,
            "APP_PORT": str(self.app_port),
            "APP_PROTOCOL": "grpc",
            "DAPR_HTTP_PORT": str(self.http_port),
            "DAPR_GRPC_PORT": str(self.grpc_port),
        }

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> HttpAnswer:
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.http_port}{path}", data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return HttpAnswer(answer.status, answer.read(), dict(answer.headers))
        except urllib.error.HTTPError as error:
            return HttpAnswer(error.code, error.read(), dict(error.headers))

    def invoke(
        self,
        method: str,
        body: bytes = b"",
        query: str = "",
        app_id: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> HttpAnswer:
        path = f"/v1.0/invoke/{app_id or self.app_id}/method/{method}" + (f"?{query}" if query else "")
        return self.http("POST", path, body, headers, timeout)

    def publish(
        self,
        topic: str,
        body: bytes,
        content_type: str,
        pubsub: str = "pubsub",
        metadata: dict[str, str] | None = None,
    ) -> HttpAnswer:
        query = "&".join(f"metadata.{k}={v}" for k, v in (metadata or {}).items())
        path = f"/v1.0/publish/{pubsub}/{topic}" + (f"?{query}" if query else "")
        return self.http("POST", path, body, {"Content-Type": content_type})

    def wait_app_healthy(self, timeout: float = 60.0) -> None:
        """Until daprd forwards invocations to the app (with app health checks, only once healthy)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                last = self.invoke("models", timeout=5)
                if last.status == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"the app never answered through daprd: {last}\n{self.log()[-3000:]}")


class App:
    """`classifier serve` as `dapr run` starts it beside `daprd`."""

    def __init__(self, daprd: Daprd, workdir: Path, **env: str) -> None:
        self.daprd = daprd
        self.workdir = workdir
        self.env = env
        self.log_path = workdir / f"serve-{daprd.app_port}.log"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))
        }
        environment.update(self.daprd.env())
        environment.update(
            CLASSIFIER_STORE=str(self.workdir / f"store-{self.daprd.app_port}"),
            CLASSIFIER_POLL_S="0.5",
            CLASSIFIER_SHUTDOWN_GRACE_S="10",
            DAPR_HEALTH_TIMEOUT="60",
            CLASSIFIER_METRICS_PORT="0",  # no fixed port shared by the tests' apps; a test may give one
        )
        environment.update(self.env)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], env=environment, cwd=ROOT, stdout=log, stderr=log
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the app has loaded its models and its daprd has seen it healthy since (so
        daprd forwards calls and events to it)."""

        def healthy() -> bool:
            if "ready: models" not in self.log().rsplit("listening on", 1)[-1]:
                return False
            log = self.daprd.log()
            return log.rfind("App entered healthy status") > log.rfind("App entered un-healthy status")

        try:
            wait_for(healthy, timeout, "classifier serve ready and seen healthy by daprd")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()[-2000:]}\n{self.daprd.log()[-2000:]}") from None

    def wait_listening(self, timeout: float = 60.0) -> None:
        _wait_port(self.daprd.app_port, timeout, "classifier serve", self.process)

    def terminate(self, timeout: float = 30.0) -> int:
        return _stop(self.process, timeout) if self.process is not None else 0

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class _Sidecar(Protocol):
    def env(self) -> dict[str, str]: ...


@contextlib.contextmanager
def sidecar_env(daprd: _Sidecar) -> Iterator[None]:
    """DaprClient (and the `classifier` CLI) read the sidecar's address from the environment
    (of a real Daprd here, or of the double, tests/daprd.py)."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in daprd.env().items() if k.startswith("DAPR_")})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Stack:
    """Redis + one or more (daprd, classifier serve) replicas, as a user's machine would have them."""

    workdir: Path
    redis: RedisServer
    resources: Path
    config: Path
    replicas: list[tuple[Daprd, App]] = field(default_factory=list)
    sidecars: list[Daprd] = field(default_factory=list)  # add_sidecar: daprds with no app

    @property
    def daprd(self) -> Daprd:
        return self.replicas[0][0]

    @property
    def app(self) -> App:
        return self.replicas[0][1]

    def add_replica(
        self,
        *,
        daprd_args: tuple[str, ...] = (),
        app_health_check: bool = True,
        wait: bool = True,
        config: Path | None = None,  # another Configuration than the stack's (its own name resolution)
        **app_env: str,
    ) -> tuple[Daprd, App]:
        # The app first, as `dapr run` starts both: daprd waits for the app port before it is ready.
        daprd = Daprd(
            self.workdir,
            self.resources,
            config or self.config,
            extra_args=daprd_args,
            app_health_check=app_health_check,
        )
        app = App(daprd, self.workdir, **app_env)
        try:
            daprd.start()
        except BaseException:
            app.terminate()  # not in self.replicas yet: close() would not stop it
            daprd.stop()
            raise
        self.replicas.append((daprd, app))
        if wait:
            app.wait_listening()
        return daprd, app

    def add_sidecar(
        self, app_id: str, *, config: Path | None = None, daprd_args: tuple[str, ...] = ()
    ) -> Daprd:
        """A daprd of another app id with no app (a caller, an uploader), same components."""
        daprd = Daprd(
            self.workdir,
            self.resources,
            config or self.config,
            extra_args=daprd_args,
            app_id=app_id,
            app_port=0,
            app_health_check=False,
        )
        self.sidecars.append(daprd)
        daprd.start()
        return daprd

    def close(self) -> None:
        for daprd in self.sidecars:
            daprd.stop()
        for daprd, app in reversed(self.replicas):
            app.terminate()
            daprd.stop()
        self.redis.stop()


@contextlib.contextmanager
def stack(
    workdir: Path,
    *,
    replicas: int = 1,
    persistent_redis: bool = False,
    config_spec: str = "",  # more of the daprd Configuration's spec, e.g. its tracing
    **app_env: str,
) -> Iterator[Stack]:
    workdir.mkdir(parents=True, exist_ok=True)
    dapr_install()
    server = RedisServer(workdir, persistent=persistent_redis)
    built = Stack(
        workdir,
        server,
        write_resources(workdir / "components", server.address),
        write_config(workdir / "config.yaml", workdir / "nr.db", extra_spec=config_spec),
    )
    try:
        for _ in range(replicas):
            built.add_replica(**app_env)
        yield built
    finally:
        built.close()
