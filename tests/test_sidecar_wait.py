"""The commands' wait for their sidecar (service/sidecar_wait.py) against a real loopback HTTP
server answering /v1.0/healthz/outbound as daprd does before and once it is ready."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import serving

from service.errors import ClassifierError, ErrorKind
from service.sidecar_wait import wait_for_sidecar


class _Sidecar(ThreadingHTTPServer):
    not_ready_probes = 0  # probes answered 500 before it answers 204
    probes = 0


class _Health(BaseHTTPRequestHandler):
    server: _Sidecar

    def do_GET(self) -> None:
        assert self.path == "/v1.0/healthz/outbound"
        self.server.probes += 1
        ready = self.server.probes > self.server.not_ready_probes
        self.send_response(204 if ready else 500)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def sidecar() -> Iterator[_Sidecar]:
    with serving(_Sidecar(("127.0.0.1", 0), _Health)) as server:
        yield server


def api_url(server: _Sidecar) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1.0"


def test_a_sidecar_not_ready_yet_is_waited_for(sidecar: _Sidecar) -> None:
    sidecar.not_ready_probes = 2
    wait_for_sidecar(api_url(sidecar), timeout_s=30)
    assert sidecar.probes == 3


def test_a_sidecar_never_ready_is_unavailable_with_its_last_answer(sidecar: _Sidecar) -> None:
    sidecar.not_ready_probes = 1 << 30
    with pytest.raises(ClassifierError) as exc:
        wait_for_sidecar(api_url(sidecar), timeout_s=0.5)
    assert exc.value.kind == ErrorKind.UNAVAILABLE
    assert exc.value.message == (
        f"no Dapr sidecar answered at {api_url(sidecar)} within 0.5 s (HTTP 500): start one with "
        "`dapr run`, or point DAPR_HTTP_PORT and DAPR_GRPC_PORT at yours"
    )
