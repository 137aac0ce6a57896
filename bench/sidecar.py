"""The service behind a real daprd, for the benchmark's sidecar cases.

One stack for the whole run (tests/real_dapr.py's `stack`): Redis, daprd 1.18.3 with the
project's components, and `classifier serve` with the models in that state store. Three
clients reach the same app process, so the difference between them is daprd's hop:

  direct   gRPC AppCallback `OnInvoke` straight to the app's port, as daprd calls it
  http     daprd's HTTP API, `POST /v1.0/invoke/image-classifier/method/classify?model=...`
           with the raw image, one keep-alive `http.client.HTTPConnection` per client thread
  grpc     daprd's gRPC API, `InvokeService` on a raw `dapr_pb2_grpc.DaprStub` (not the SDK's
           `DaprClient.invoke_method`, so none of the SDK's own work is timed), the image in an Any

All three send the same body, content type and query, and parse the same JSON answer.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import threading
import time
from pathlib import Path

import grpc
from dapr.clients import DaprClient
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2_grpc, dapr_pb2_grpc, invoke_pb2
from google.protobuf import any_pb2

from service.stores.dapr import DaprStore

ROOT = Path(__file__).resolve().parents[1]
CONTENT_TYPE = "application/octet-stream"
TIMEOUT_S = 60.0


def _harness():
    """tests/real_dapr.py (the tests' real-Dapr harness), imported on first use."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import real_dapr

    return real_dapr


class Sidecar:
    """Redis + daprd + `classifier serve` (models uploaded through daprd) and the three clients."""

    def __init__(self, workdir: Path, models: dict[str, bytes], top_k: int) -> None:
        harness = _harness()
        self.top_k = top_k
        self._exit = contextlib.ExitStack()
        started = time.perf_counter()
        try:
            # As tests/real_dapr.py's `stack`, but the models go into the store before the app
            # starts: an app told which models to load (CLASSIFIER_MODELS) fails its start-up
            # if one is missing. daprd serves its APIs before it waits for the app's port.
            workdir.mkdir(parents=True, exist_ok=True)
            redis = harness.RedisServer(workdir)
            self.stack = harness.Stack(
                workdir,
                redis,
                harness.write_resources(workdir / "components", redis.address),
                harness.write_config(workdir / "config.yaml", workdir / "nr.db"),
            )
            self._exit.callback(self.stack.close)
            self.daprd = harness.Daprd(workdir, self.stack.resources, self.stack.config)
            self._exit.callback(self.daprd.stop)
            self.daprd.start()
            with harness.sidecar_env(self.daprd), DaprClient() as client:
                store = DaprStore(client, workdir / "uploader-cache")
                for name, model in models.items():
                    store.put(name, model)
            app = harness.App(
                self.daprd,
                workdir,
                CLASSIFIER_MODELS=",".join(models),  # healthy once every model is loaded
                CLASSIFIER_POLL_S="60",  # the harness polls every 0.5 s; keep the store quiet
            )
            self.stack.replicas.append((self.daprd, app))
            app.wait_listening()
            self.daprd.wait_app_healthy(timeout=120)
            self.ready_s = time.perf_counter() - started
            self._direct = grpc.insecure_channel(f"127.0.0.1:{self.daprd.app_port}")
            self._grpc = grpc.insecure_channel(f"127.0.0.1:{self.daprd.grpc_port}")
            self.app = appcallback_pb2_grpc.AppCallbackStub(self._direct)
            self.dapr = dapr_pb2_grpc.DaprStub(self._grpc)
        except BaseException:
            self._exit.close()
            raise
        self._pool: list[http.client.HTTPConnection] = []  # idle keep-alive connections
        self._lock = threading.Lock()
        self.http_connections = 0  # keep-alive check: connections opened over the run
        self.http_reconnects = 0  # requests that found their connection closed by daprd
        self.response_headers: dict[str, str] = {}  # of the first HTTP answer, for the findings

    def _query(self, model: str) -> str:
        return f"model={model}&top_k={self.top_k}"

    def direct(self, image: bytes, model: str) -> dict:
        """OnInvoke straight to the app behind daprd."""
        return json.loads(self.call_direct("classify", image, self._query(model)))

    def grpc(self, image: bytes, model: str) -> dict:
        """daprd's gRPC API: InvokeService, which daprd turns into OnInvoke on the app."""
        return json.loads(self.call_grpc("classify", image, self._query(model)))

    def http(self, image: bytes, model: str) -> dict:
        """daprd's HTTP API on a kept-alive connection."""
        return json.loads(self.call_http("classify", image, self._query(model)))

    @staticmethod
    def _request(method: str, body: bytes, query: str) -> common_pb2.InvokeRequest:
        return common_pb2.InvokeRequest(
            method=method,
            data=any_pb2.Any(value=body),
            content_type=CONTENT_TYPE,
            http_extension=common_pb2.HTTPExtension(verb=common_pb2.HTTPExtension.POST, querystring=query),
        )

    def call_direct(self, method: str, body: bytes = b"", query: str = "") -> bytes:
        response = self.app.OnInvoke(self._request(method, body, query), timeout=TIMEOUT_S)
        return response.data.value

    def call_grpc(self, method: str, body: bytes = b"", query: str = "") -> bytes:
        request = invoke_pb2.InvokeServiceRequest(
            id=self.daprd.app_id, message=self._request(method, body, query)
        )
        return self.dapr.InvokeService(request, timeout=TIMEOUT_S).data.value

    def call_http(self, method: str, body: bytes = b"", query: str = "") -> bytes:
        """POST on a kept-alive connection from the pool (one per client thread)."""
        path = f"/v1.0/invoke/{self.daprd.app_id}/method/{method}" + (f"?{query}" if query else "")
        for attempt in range(2):
            connection = self._take()
            try:
                connection.request("POST", path, body=body, headers={"Content-Type": CONTENT_TYPE})
                answer = connection.getresponse()
                data = answer.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                connection.close()  # daprd closed it while idle: count it, reconnect once
                if attempt:
                    raise
                with self._lock:
                    self.http_reconnects += 1
                continue
            if not self.response_headers:
                self.response_headers = dict(answer.getheaders())
            if answer.will_close:
                connection.close()
            else:
                with self._lock:
                    self._pool.append(connection)
            if answer.status != 200:
                raise RuntimeError(f"daprd answered {answer.status}: {data[:500]!r}")
            return data
        raise AssertionError("unreachable")

    def _take(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._pool:
                return self._pool.pop()
            self.http_connections += 1
        return http.client.HTTPConnection("127.0.0.1", self.daprd.http_port, timeout=TIMEOUT_S)

    def app_rss_mib(self) -> float:
        return _rss_mib(self.stack.app.process.pid)

    def daprd_rss_mib(self) -> float:
        return _rss_mib(self.daprd.process.pid)

    def close(self) -> dict[str, int]:
        """Stop the clients, then the app, daprd and Redis (by PID); their exit codes."""
        self._direct.close()
        self._grpc.close()
        for connection in self._pool:
            connection.close()
        self._exit.close()
        return {"app": self.stack.app.process.returncode, "daprd": self.daprd.process.returncode}


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
