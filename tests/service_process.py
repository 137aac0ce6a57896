"""`classifier serve` as a real process beside the daprd double, as `dapr run` starts it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import MODELS
from dapr.clients import DaprClient
from daprd import FakeDaprd, InvokeResult
from real_dapr import free_port, sidecar_env

from service.stores.dapr import DaprStore

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
            CLASSIFIER_METRICS_PORT="0",  # no fixed port shared by the tests' apps; a test may give one
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

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (resident now) and VmHWM (peak resident) of the process, in KiB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def new_daprd(**options: object) -> FakeDaprd:
    return FakeDaprd(app_port=free_port(), key_prefix="name", **options).start()  # type: ignore[arg-type]


def upload(daprd: FakeDaprd, tmp: Path, name: str, model: str, labels: list[str] | None = None) -> int:
    """Put a ../shared model into the double's state store as `classifier models put` does."""
    with sidecar_env(daprd), DaprClient() as client:
        store = DaprStore(client, tmp / "uploader-cache")
        model_bytes = (MODELS / model / "model.tflite").read_bytes()
        if labels is None and (MODELS / model / "labels.txt").exists():
            labels = (MODELS / model / "labels.txt").read_text().splitlines()
        return store.put(name, model_bytes, labels).version


def error_of(result: InvokeResult) -> dict:
    """The error of a failed call as {"code", "message"}: the code from the status's
    google.rpc.ErrorInfo reason (lower-cased), the message from the status message."""
    info = result.error_info()
    assert info is not None, f"no ErrorInfo in the status details: {result.code.name} {result.details!r}"
    assert info["domain"] == "image-classifier", info
    return {"code": info["reason"].lower(), "message": result.details}


def results_for(daprd: FakeDaprd, event_id: str, timeout: float = 10.0) -> dict:
    """The result the app published to `classifications` for an event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for published in daprd.published("classifications"):
            result = json.loads(published.data)
            if result.get("correlation_id") == event_id:
                return result
        time.sleep(0.02)
    raise AssertionError(f"no result for {event_id}")
