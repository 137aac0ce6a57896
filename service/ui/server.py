"""`classifier ui` (and `classifier demo --ui`): a page to try the classifier in a browser.

The page (static/: plain HTML, JS and CSS, nothing fetched from anywhere else) calls the service
as a user's page calls a Dapr app: it POSTs the raw image to `{invoke_base}/classify?model=M&top_k=K`
and GETs `{invoke_base}/models`, and reads answers as daprd's HTTP invoke API gives them: the app's
JSON, or its gRPC status as JSON under the HTTP code daprd maps it to. `invoke_base` is either

- the sidecar's invoke API, `http://127.0.0.1:3500/v1.0/invoke/image-classifier/method`, when a
  sidecar is configured (DAPR_HTTP_PORT or DAPR_HTTP_ENDPOINT). daprd 1.18 sends no CORS headers
  unless started with `--allowed-origins` naming the page's origin, so the browser would refuse
  to read its answers otherwise (docs/ui.md); or
- this server's `/api`, which forwards each call to a gRPC app through `AppCallback/OnInvoke`
  exactly as daprd forwards an HTTP invocation: to a `ClassifierService` in this process on the
  local store (`classifier ui`), or to the `classifier serve` the demo started (`demo --ui`).
  The page thus gets the service's own answers and errors, whichever way it is served.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import grpc
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from google.protobuf import any_pb2, json_format
from google.rpc import status_pb2
from grpc_status import rpc_status

from ..config import ServeSettings, Settings
from ..edge.calls import HTTP_STATUS_OF, error_status, status_of
from ..errors import ClassifierError, ErrorKind, invalid_argument
from .streams import StreamFanOut, StreamHub, valid_stream_id

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CALL_TIMEOUT_S = 60.0
STATIC_FILES = {  # path -> (file in static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
METHODS = ("classify", "models")
STREAM_EVENTS = ("/api/streams/", "/events")  # GET /api/streams/<stream_id>/events: Server-Sent Events
KEEPALIVE_S = 15.0  # an SSE comment at least this often: proxies keep the response open
GONE_CHECK_S = 0.5  # how often an idle event stream looks whether its browser has gone

_CODE_OF = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class Answer:
    """An HTTP answer of the invoke API: status code, body, content type."""

    status: int
    body: bytes
    content_type: str = "application/json"


def status_answer(status: status_pb2.Status) -> Answer:
    """An app error as daprd's HTTP API renders it: the status as protojson, details with `@type`
    (dapr/pkg/api/http/directmessaging.go:196-212), under the HTTP code for the gRPC code."""
    body = json_format.MessageToDict(status)
    body.setdefault("code", 0)
    http = HTTP_STATUS_OF.get(_CODE_OF.get(status.code, grpc.StatusCode.UNKNOWN), 500)
    return Answer(http, json.dumps(body).encode())


def error_answer(error: ClassifierError) -> Answer:
    return status_answer(_status_proto(status_of(error)))


def _status_proto(status: grpc.Status) -> status_pb2.Status:
    """The google.rpc.Status of one made by error_status: it travels in the trailing metadata."""
    return status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])


class AppChannel:
    """Calls a gRPC app's `classify` and `models` as daprd forwards an HTTP invocation:
    `OnInvoke` with the body in `Any.value`, the content type, the verb and the query string."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"{LOOPBACK}:{port}")
        self.app = appcallback_pb2_grpc.AppCallbackStub(self.channel)

    def invoke(self, method: str, verb: str, body: bytes, content_type: str, query: str) -> Answer:
        request = common_pb2.InvokeRequest(
            method=method,
            data=any_pb2.Any(value=body),
            content_type=content_type,
            http_extension=common_pb2.HTTPExtension(
                verb=common_pb2.HTTPExtension.Verb.Value(verb), querystring=query
            ),
        )
        try:
            response = self.app.OnInvoke(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            status = rpc_status.from_call(exc)
            if status is None:  # no details: the app did not answer (e.g. not listening yet)
                code = exc.code()
                status = status_pb2.Status(code=code.value[0], message=str(exc.details()))
            return status_answer(status)
        return Answer(200, response.data.value, response.content_type or "application/json")

    def close(self) -> None:
        self.channel.close()


@dataclass(frozen=True)
class PageConfig:
    """What the page needs to know: where to call, and what to tell the person using it."""

    invoke_base: str  # ".../method" without the trailing slash: the page appends /classify, /models
    served_by: str  # one line for the page's header
    streams: bool = False  # /api/streams/<id>/events is served (a sidecar's gRPC port is known)

    def to_json(self) -> bytes:
        return json.dumps(
            {"invoke_base": self.invoke_base, "served_by": self.served_by, "streams": self.streams}
        ).encode()


class UiServer(ThreadingHTTPServer):
    """The page's HTTP server on 127.0.0.1: the static files, /config.json and, without a
    sidecar, /api/classify and /api/models forwarded to `app`."""

    daemon_threads = True

    def __init__(self, port: int, config: PageConfig, max_body_bytes: int) -> None:
        self.streams: StreamFanOut | None = None  # set before serving when config.streams
        super().__init__((LOOPBACK, port), _Handler)  # first the above: a failed bind calls server_close
        self.config = config
        self.app: AppChannel | None = None  # set before serving when the page calls /api
        self.max_body_bytes = max_body_bytes
        self.connect_origin = _origin(config.invoke_base)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}/"

    def server_close(self) -> None:
        if self.streams is not None:
            self.streams.close()  # ends the event streams: their handler threads return
        super().server_close()


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme else ""


class _Handler(BaseHTTPRequestHandler):
    server: UiServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            page = resources.files(__package__).joinpath("static", name).read_bytes()
            self._send(Answer(200, page, content_type))
        elif path == "/config.json":
            self._send(Answer(200, self.server.config.to_json()))
        elif path == "/api/models":
            self._forward("models", "GET", b"", query)
        elif path.startswith(STREAM_EVENTS[0]) and path.endswith(STREAM_EVENTS[1]):
            self._stream_events(urllib.parse.unquote(path[len(STREAM_EVENTS[0]) : -len(STREAM_EVENTS[1])]))
        else:
            self._not_found(path)

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        method = path.removeprefix("/api/")
        if not path.startswith("/api/") or method not in METHODS:
            self._not_found(path)
            return
        try:
            body = self._body()
        except ClassifierError as exc:
            self.close_connection = True  # the body was not read
            self._send(error_answer(exc))
            return
        self._forward(method, "POST", body, query)

    def _body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            raise ClassifierError(ErrorKind.INVALID_ARGUMENT, "send the image with a Content-Length")
        length = int(length_header)
        if length > self.server.max_body_bytes:
            raise ClassifierError(
                ErrorKind.RESOURCE_EXHAUSTED,
                f"the body is {length} bytes, over the limit of {self.server.max_body_bytes} "
                f"(CLASSIFIER_MAX_MESSAGE_MB={self.server.max_body_bytes >> 20})",
            )
        return self.rfile.read(length)

    def _forward(self, method: str, verb: str, body: bytes, query: str) -> None:
        if self.server.app is None:  # with a sidecar the page calls daprd, not /api
            self._not_found(self.path)
            return
        content_type = self.headers.get("Content-Type") or "application/octet-stream"
        self._send(self.server.app.invoke(method, verb, body, content_type, query))

    def _stream_events(self, stream_id: str) -> None:
        """The results of `stream_id` in seq order as they arrive, one SSE `data:` line of JSON each,
        until the browser goes or the server stops."""
        fanout = self.server.streams
        if fanout is None:
            self._send(
                error_answer(
                    ClassifierError(
                        ErrorKind.NOT_FOUND,
                        "streams need a Dapr sidecar: run classifier ui with one (docs/ui.md)",
                    )
                )
            )
            return
        if not valid_stream_id(stream_id):
            self._send(
                error_answer(
                    invalid_argument(f"stream id {stream_id!r}: 1-128 characters of A-Z a-z 0-9 . _ : -")
                )
            )
            return
        watcher = fanout.watch(stream_id)
        self.close_connection = True  # the response ends when the connection does
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self._common_headers()
            self.wfile.write(b": following\n\n")
            self.wfile.flush()
            written = time.monotonic()
            while (taken := watcher.take(GONE_CHECK_S)) is not None and not self._browser_gone():
                events, dropped = taken
                if dropped:
                    events.insert(0, {"type": "dropped", "count": dropped})
                chunk = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
                if not chunk and time.monotonic() - written >= KEEPALIVE_S:
                    chunk = ": keep-alive\n\n"
                if chunk:
                    self.wfile.write(chunk.encode())
                    self.wfile.flush()
                    written = time.monotonic()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away (Stop, or the tab closed)
        finally:
            fanout.unwatch(watcher)

    def _browser_gone(self) -> bool:
        """Whether the browser closed its end (EventSource.close(), a tab closed): an EOF to read."""
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _not_found(self, path: str) -> None:
        status = error_status(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", f"no such page: {path}")
        self._send(status_answer(_status_proto(status)))

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self._common_headers()
        self.wfile.write(answer.body)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        # Nothing but this server and the sidecar: the page fetches nothing from the internet.
        connect = " ".join(filter(None, ["'self'", self.server.connect_origin]))
        self.send_header(
            "Content-Security-Policy",
            f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
            f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        )
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def sidecar_invoke_base(app_id: str) -> str | None:
    """The sidecar's invoke API for `app_id` when one is configured (as `dapr run` sets
    DAPR_HTTP_PORT), else None."""
    if not (os.environ.get("DAPR_HTTP_PORT") or os.environ.get("DAPR_HTTP_ENDPOINT")):
        return None
    from dapr.clients.http.helpers import get_api_url

    return f"{get_api_url()}/invoke/{urllib.parse.quote(app_id, safe='')}/method"


def serve_ui(settings: Settings, port: int, app_id: str) -> int:
    """`classifier ui`: the page, calling the sidecar if one is configured, else the service
    itself in this process on the local store, on a loopback port only this server calls."""
    from ..edge.app import ClassifierService

    serve = ServeSettings.from_env()
    sidecar = sidecar_invoke_base(app_id)
    if sidecar is not None:
        streams = bool(os.environ.get("DAPR_GRPC_PORT"))
        server = _bind(port, PageConfig(sidecar, f"{app_id} through the Dapr sidecar", streams), serve)
        hub = StreamHub(serve) if streams else None
        server.streams = hub.fanout if hub is not None else None
        try:
            _run(
                server,
                f"classifier ui: {server.url} (calls {app_id} through the Dapr sidecar at "
                f"{_origin(sidecar)}, which must allow this origin: daprd --allowed-origins "
                f"{server.url.rstrip('/')}; Ctrl-C stops)",
            )
        finally:
            if hub is not None:
                hub.close()
        return 0
    describe = f"the embedded pipeline on the local store {settings.store_dir}"
    server = _bind(port, PageConfig("/api", describe), serve)  # first: a port in use is one line
    # A page to try it needs no /metrics (nor port 9464, which a `classifier serve` may hold).
    in_process = replace(serve, dapr=False, port=0, listen_address=LOOPBACK, metrics_port=0)
    service = ClassifierService(settings, in_process)
    try:
        _run_over_app(server, service.start(), describe, failed=service.failed)
    finally:
        service.stop(grace_s=0)
    if service.failed.is_set():
        raise ClassifierError(ErrorKind.INVALID_ARGUMENT, f"start-up failed: {service.startup_error}")
    return 0


def serve_app_page(app_port: int, port: int, describe: str, serve: ServeSettings) -> None:
    """`classifier demo --ui`: the page over the gRPC app on `app_port`, until SIGINT or SIGTERM."""
    _run_over_app(_bind(port, PageConfig("/api", describe), serve), app_port, describe)


def _run_over_app(
    server: UiServer, app_port: int, describe: str, failed: threading.Event | None = None
) -> None:
    server.app = AppChannel(app_port)
    try:
        _run(server, f"classifier ui: {server.url} (calls {describe}; Ctrl-C stops)", failed)
    finally:
        server.app.close()


def _bind(port: int, config: PageConfig, serve: ServeSettings) -> UiServer:
    if not 0 <= port <= 65535:
        raise ClassifierError(ErrorKind.INVALID_ARGUMENT, f"--port {port}: must be a port number (0-65535)")
    try:
        return UiServer(port, config, serve.max_message_bytes)
    except OSError as exc:
        raise ClassifierError(
            ErrorKind.UNAVAILABLE,
            f"cannot listen on {LOOPBACK}:{port}: {exc.strerror or exc}; choose another port with --port",
        ) from exc


def _run(server: UiServer, line: str, failed: threading.Event | None = None) -> None:
    """Serve, after printing `line`, until SIGINT or SIGTERM (or `failed` is set)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, name="ui", daemon=True)
    thread.start()
    print(line, flush=True)
    try:
        while not stop.wait(0.2):
            if failed is not None and failed.is_set():
                break
    finally:
        server.shutdown()
        server.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
