"""`classifier serve` as a real process beside the daprd double, as `dapr run` starts it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from daprd import FakeDaprd

from service.demo import free_port

ROOT = Path(__file__).resolve().parents[1]


class ServiceProcess:
    def __init__(self, daprd: FakeDaprd, workdir: Path, **env: str) -> None:
        self.daprd = daprd
        self.log_path = workdir / f"serve-{daprd.app_port}.log"
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))
        }
        environment.update(daprd.env())
        environment.update(
            CLASSIFIER_STORE=str(workdir / "store"),
            CLASSIFIER_POLL_S="0.5",
            CLASSIFIER_SHUTDOWN_GRACE_S="10",
            DAPR_HEALTH_TIMEOUT="60",
        )
        environment.update(env)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=environment,
            cwd=ROOT,
            stdout=self._log,
            stderr=self._log,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        try:
            self.daprd.wait_for_app(timeout)
            self.daprd.wait_healthy(timeout)
        except Exception as exc:
            raise AssertionError(f"service did not become healthy: {exc}\n{self.log()[-3000:]}") from exc

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def new_daprd(**options: object) -> FakeDaprd:
    return FakeDaprd(app_port=free_port(), key_prefix="name", **options).start()  # type: ignore[arg-type]


@contextlib.contextmanager
def sidecar_env(daprd: FakeDaprd) -> Iterator[None]:
    """DaprClient reads its sidecar's address from the environment."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in daprd.env().items() if k.startswith("DAPR_")})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
