"""The `classifier` command line."""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import io
import json
import logging
import os
import shlex
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_for_futures
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from . import logs
from .command_input import read_input
from .config import ServeSettings, Settings
from .errors import ClassifierError, ErrorKind, invalid_argument
from .guest_args import parse_template
from .guest_source import GuestSource, is_path, resolve_guest
from .inference.backend import Encoding, Graph, Target, backend_for, load_graph
from .inference.cache import GraphCache
from .inference.labels import parse_labels
from .sidecar_wait import check_dapr_environment, wait_for_sidecar
from .stores.base import GuestManifest, ModelManifest, Progress, Store, check_model_guest, check_name
from .wasm.call import GuestCall
from .wasm.host import Preopen, WasmHost

EXIT_TRAP = 134  # like an abort: the guest trapped rather than exiting
SIDECAR_WAIT_S = "5"  # DAPR_HEALTH_TIMEOUT of the commands: their sidecar runs already, or it never will
_T = TypeVar("_T")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.store:
            settings = replace(settings, store_dir=args.store)
        return int(args.handler(args, settings))
    except ClassifierError as exc:
        print(f"classifier: {exc.message}{_sidecar_hint(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: what was started is stopped by the finally clauses on the way
        print("classifier: interrupted", file=sys.stderr)
        return 130


def _sidecar_hint(exc: ClassifierError) -> str:
    """What to do when the sidecar stopped answering during a command (it answered at first)."""
    port = os.environ.get("DAPR_GRPC_PORT")
    if exc.kind != ErrorKind.UNAVAILABLE or not port or "sidecar" in exc.message:
        return ""
    return f"; is the Dapr sidecar (DAPR_GRPC_PORT={port}) still running?"


STORE_HELP = "local model store (env CLASSIFIER_STORE, default ./.classifier)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="classifier",
        description="Image classification with WebAssembly business logic over TensorFlow Lite.",
    )
    parser.add_argument("--store", type=Path, help=STORE_HELP)
    # --store also goes after the subcommand (`classifier models list --store DIR`): each command
    # that uses the store takes it too, without a default so that one given first is kept.
    with_store = argparse.ArgumentParser(add_help=False)
    with_store.add_argument("--store", type=Path, default=argparse.SUPPRESS, help=STORE_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="manage the models in the store")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    put = model_commands.add_parser("put", help="store a new version of a model", parents=[with_store])
    put.add_argument("name")
    put.add_argument("model", type=Path, help="a .tflite file")
    put.add_argument("--labels", type=Path, help="one label per line (default: the model's metadata)")
    _model_guest_options(put, "(default: the service's guest)")
    put.set_defaults(handler=_models_put)
    set_guest = model_commands.add_parser(
        "set-guest",
        help="store a new version of a model (the same bytes and labels) with another guest",
        parents=[with_store],
    )
    set_guest.add_argument("name")
    _model_guest_options(set_guest, "(none: the service's guest)", positional=True)
    set_guest.set_defaults(handler=_models_set_guest)
    listing = model_commands.add_parser("list", help="list models", parents=[with_store])
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_models_list)
    remove = model_commands.add_parser("rm", help="remove a model", parents=[with_store])
    remove.add_argument("name")
    remove.set_defaults(handler=_models_rm)

    guests = commands.add_parser("guests", help="manage the business-logic guests in the store")
    guest_commands = guests.add_subparsers(dest="guests_command", required=True)
    guest_put = guest_commands.add_parser("put", help="store a new version of a guest", parents=[with_store])
    guest_put.add_argument("name")
    guest_put.add_argument("wasm", type=Path, help="a .wasm WASI command")
    guest_put.add_argument(
        "--args",
        help="args template of a command-style guest (one written for WasmEdge), "
        "e.g. '{model_path} {image_path}' (default: the default guest interface)",
    )
    guest_put.set_defaults(handler=_guests_put)
    guest_list = guest_commands.add_parser("list", help="list guests", parents=[with_store])
    guest_list.add_argument("--json", action="store_true")
    guest_list.set_defaults(handler=_guests_list)
    guest_rm = guest_commands.add_parser("rm", help="remove a guest", parents=[with_store])
    guest_rm.add_argument("name")
    guest_rm.set_defaults(handler=_guests_rm)

    serve = commands.add_parser(
        "serve", help="run the Dapr gRPC app (APP_PORT, default 50051)", parents=[with_store]
    )
    serve.add_argument("--port", type=_port_number, help="default: APP_PORT or 50051")
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser(
        "demo",
        help="start `classifier serve` on the local store and classify images through it as daprd would",
        parents=[with_store],
    )
    demo.add_argument("images", nargs="+", type=Path)
    demo.add_argument("--model", required=True)
    demo.add_argument("--top-k", type=int, default=3)
    demo.add_argument("--ui", action="store_true", help="then serve the page of `classifier ui` over it")
    demo.add_argument("--ui-port", type=int, default=8080, help="the page's port with --ui (default 8080)")
    demo.set_defaults(handler=_demo)

    ui = commands.add_parser(
        "ui",
        help="a page to try the classifier in a browser, through the sidecar or the local store",
        parents=[with_store],
    )
    ui.add_argument("--port", type=int, default=8080, help="default 8080; 0: a free port")
    ui.add_argument("--app-id", default="image-classifier", help="the app the page calls through the sidecar")
    ui.set_defaults(handler=_ui)

    invoke = commands.add_parser("invoke", help="classify images through the sidecar (service invocation)")
    invoke.add_argument("images", nargs="+", type=Path)
    invoke.add_argument("--model")
    invoke.add_argument("--top-k", type=int)
    invoke.add_argument("--app-id", default="image-classifier")
    invoke.set_defaults(handler=_invoke)

    publish = commands.add_parser(
        "publish",
        help="publish images, or a stream of frames (--video, --frames), to the images topic (sidecar)",
    )
    publish.add_argument("images", nargs="*", type=Path)
    publish.add_argument("--model")
    publish.add_argument("--top-k", type=int)
    _stream_options(publish)
    publish.set_defaults(handler=_publish)

    results = commands.add_parser(
        "results",
        help="print the results of streams from the results topic, in seq order, through the sidecar",
    )
    results.add_argument(
        "--stream-id", metavar="ID", help="only this stream's results (default: every stream)"
    )
    results.add_argument("--follow", action="store_true", help="until Ctrl-C (default: until --idle passes)")
    results.add_argument(
        "--idle",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="without --follow: stop after S s with none",
    )
    results.add_argument("--count", type=_positive_int, metavar="N", help="stop after N results")
    results.add_argument(
        "--window", type=_positive_int, default=32, metavar="N", help="results held behind a gap at most"
    )
    results.add_argument(
        "--wait", type=_non_negative_float, default=2.0, metavar="S", help="the longest a gap is waited for"
    )
    results.add_argument("--json", action="store_true", help="one result (or skipped gap) per line, as JSON")
    results.set_defaults(handler=_results)

    classify = commands.add_parser(
        "classify", help="classify images through the business-logic guest", parents=[with_store]
    )
    classify.add_argument("images", nargs="+", type=Path)
    classify.add_argument("--model", required=True)
    classify.add_argument("--top-k", type=int, default=5)
    classify.add_argument(
        "--guest",
        metavar="FILE.wasm|NAME",
        help="business-logic guest: a .wasm file, or the name of one stored with `guests put` "
        "(default: the embedded one)",
    )
    classify.add_argument(
        "--guest-args",
        metavar="TEMPLATE",
        help="the --guest is command-style (written for WasmEdge): its args, e.g. "
        "'{model_path} {image_path}' (env CLASSIFIER_GUEST_ARGS)",
    )
    classify.add_argument("--json", action="store_true", help="one JSON response per line")
    classify.set_defaults(handler=_classify)

    wasm = commands.add_parser("wasm", help="run WASI guests with the host modules")
    wasm_commands = wasm.add_subparsers(dest="wasm_command", required=True)
    run = wasm_commands.add_parser(
        "run",
        help="run a WASI command guest, like `wasmedge --dir .:. --nn-preload ... app.wasm args`",
        parents=[with_store],
    )
    run.add_argument(
        "--dir",
        action="append",
        default=[],
        metavar="GUEST:HOST",
        help="preopen HOST as GUEST, read-only (PATH alone: the same path; add :rw to allow writes)",
    )
    run.add_argument(
        "--nn-preload",
        action="append",
        default=[],
        metavar="NAME:TensorflowLite:CPU:PATH",
        help="a model the guest can open with wasi-nn load_by_name",
    )
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--timeout", type=_seconds, default=3600.0, help="seconds (default 3600)")
    run.add_argument("guest", type=Path)
    run.add_argument("args", nargs=argparse.REMAINDER)
    run.set_defaults(handler=_wasm_run)
    return parser


def _model_guest_options(parser: argparse.ArgumentParser, default: str, positional: bool = False) -> None:
    """`models put --guest NAME` and `models set-guest MODEL [NAME]`: the model's own guest."""
    what = "the guest that runs this model's requests: a stored guest's name or a shipped one's " + default
    if positional:
        parser.add_argument("guest", nargs="?", metavar="GUEST", help=what)
    else:
        parser.add_argument("--guest", metavar="NAME", help=what)
    parser.add_argument(
        "--guest-args",
        metavar="TEMPLATE",
        help="the guest is command-style (written for WasmEdge): its args, e.g. '{model_path} {image_path}' "
        "(default: a stored guest's own)",
    )


def _model_guest(args: argparse.Namespace, store: Store) -> tuple[str | None, tuple[str, ...] | None]:
    """The guest and args template a model is to name, checked: it resolves now."""
    template = parse_template(args.guest_args) if args.guest_args is not None else None
    check_model_guest(args.guest, template)
    if args.guest is not None:
        resolve_guest(args.guest, store)
    return args.guest, template


def _guest_note(manifest: ModelManifest) -> str:
    if manifest.guest is None:
        return "the service's guest"
    template = f" (args {shlex.join(manifest.guest_args)})" if manifest.guest_args is not None else ""
    return f"guest {manifest.guest}{template}"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


def _port_number(text: str) -> int:
    if not (text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _store(settings: Settings) -> Store:
    """The Dapr state store when a sidecar is configured (DAPR_GRPC_PORT), else the local one."""
    from .edge.app import connect_store  # the Dapr SDK loads only when it is needed

    serve = ServeSettings.from_env()
    if not serve.dapr:
        store, _ = connect_store(settings, serve)  # the local store: no sidecar to wait for
        return store
    store, _ = _sidecar(lambda: connect_store(settings, serve))
    return store


def _sidecar(connect: Callable[[], _T]) -> _T:
    """`connect()` makes a DaprClient once the sidecar is healthy. A command waits SIDECAR_WAIT_S
    unless DAPR_HEALTH_TIMEOUT says otherwise (service/sidecar_wait.py), then fails with one line."""
    from dapr.clients.http.helpers import get_api_url

    check_dapr_environment()
    os.environ.setdefault("DAPR_HEALTH_TIMEOUT", SIDECAR_WAIT_S)
    wait_for_sidecar(get_api_url(), float(os.environ["DAPR_HEALTH_TIMEOUT"]))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the SDK's own health lines
            return connect()
    except TimeoutError as exc:  # healthy a moment ago, gone now
        raise ClassifierError(
            ErrorKind.UNAVAILABLE,
            f"the Dapr sidecar at {get_api_url()} stopped answering: is it still running?",
        ) from exc


def _progress(label: str) -> Progress:
    interactive = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        line = f"{label} [{'#' * filled}{'.' * (width - filled)}] {done >> 10}/{total >> 10} KiB"
        if interactive:
            print(f"\r{line}", end="\n" if done >= total else "", file=sys.stderr, flush=True)
        elif done >= total:
            print(line, file=sys.stderr)

    return show


def _announce(kind: str, name: str, version: int) -> None:
    """Tell running services about a new version (they also poll): best effort."""
    serve = ServeSettings.from_env()
    if not serve.dapr:
        return
    from dapr.clients import DaprClient

    try:
        with DaprClient() as client:
            client.publish_event(
                serve.updates_pubsub,
                serve.updates_topic,
                json.dumps({"kind": kind, "name": name, "version": version}),
                data_content_type="application/json",
            )
    except Exception as exc:  # the services' polling picks the version up anyway
        print(f"classifier: could not publish to {serve.updates_topic}: {_call_error(exc)}", file=sys.stderr)


def _models_put(args: argparse.Namespace, settings: Settings) -> int:
    model = _read(args.model)
    labels = parse_labels(_text(args.labels, "--labels")) if args.labels else None
    store = _store(settings)
    guest, template = _model_guest(args, store)
    manifest = store.put(
        args.name,
        model,
        labels,
        progress=_progress(f"uploading {args.name}"),
        guest=guest,
        guest_args=template,
    )
    if manifest.unchanged:
        same = "sha256, labels and guest" if manifest.guest else "sha256 and labels"
        print(f"{manifest.name} version {manifest.version} is already stored (same {same})")
        return 0
    source = "labels file" if args.labels else ("model metadata" if manifest.has_labels else "no labels")
    print(
        f"stored {manifest.name} version {manifest.version} "
        f"({manifest.size} bytes, {manifest.num_classes} classes, {source}"
        f"{', ' + _guest_note(manifest) if manifest.guest else ''})"
    )
    _announce("model", manifest.name, manifest.version)
    return 0


def _models_set_guest(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    guest, template = _model_guest(args, store)
    manifest = store.set_guest(args.name, guest, template)
    if manifest.unchanged:
        print(f"{manifest.name} version {manifest.version} already runs {_guest_note(manifest)}")
        return 0
    print(f"stored {manifest.name} version {manifest.version}: {_guest_note(manifest)}")
    _announce("model", manifest.name, manifest.version)
    return 0


def _print_manifests(
    manifests: Sequence[Any], as_json: bool, line: Callable[[Any], str], kind: str, settings: Settings
) -> int:
    """`models list` / `guests list`: JSON, or one tab-separated line each (none: a note on stderr)."""
    if as_json:
        print(json.dumps([m.to_dict() for m in manifests], indent=2))
    else:
        for manifest in manifests:
            print(line(manifest))
    if not manifests and not as_json:
        serve = ServeSettings.from_env()
        where = f"the Dapr state store {serve.state_store!r}" if serve.dapr else str(settings.store_dir)
        print(f"no {kind} in {where}: store one with `classifier {kind} put`", file=sys.stderr)
    return 0


def _models_list(args: argparse.Namespace, settings: Settings) -> int:
    def line(m: ModelManifest) -> str:
        tensor = m.spec.inputs[0]
        shape = "x".join(str(d) for d in tensor.shape)
        return (
            f"{m.name}\tv{m.version}\t{tensor.dtype} {shape}\t{m.num_classes} classes\t{m.sha256[:12]}"
            f"\t{_guest_note(m)}"
        )

    return _print_manifests(_store(settings).list_models(), args.json, line, "models", settings)


def _models_rm(args: argparse.Namespace, settings: Settings) -> int:
    _store(settings).remove(args.name)
    print(f"removed {args.name}")
    _announce("model", args.name, 0)
    return 0


def _guests_put(args: argparse.Namespace, settings: Settings) -> int:
    template = parse_template(args.args) if args.args is not None else None
    manifest = _store(settings).put_guest(
        args.name, _read(args.wasm), template, progress=_progress(f"uploading {args.name}")
    )
    if manifest.unchanged:
        print(f"guest {manifest.name} version {manifest.version} is already stored (same sha256 and args)")
        return 0
    print(f"stored guest {manifest.name} version {manifest.version} ({manifest.size} bytes)")
    _announce("guest", manifest.name, manifest.version)
    return 0


def _guests_list(args: argparse.Namespace, settings: Settings) -> int:
    def line(m: GuestManifest) -> str:
        template = shlex.join(m.args) if m.args is not None else "(default interface)"
        return f"{m.name}\tv{m.version}\t{m.size} bytes\t{m.sha256[:12]}\t{template}"

    return _print_manifests(_store(settings).list_guests(), args.json, line, "guests", settings)


def _guests_rm(args: argparse.Namespace, settings: Settings) -> int:
    _store(settings).remove_guest(args.name)
    print(f"removed guest {args.name}")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from .edge.app import serve

    serve_settings = ServeSettings.from_env()
    logs.configure(serve_settings.log_format)
    if args.port is not None:
        serve_settings = replace(serve_settings, port=args.port)
    try:
        _check_port_free(serve_settings.listen_address, serve_settings.port)
        return serve(settings, serve_settings)
    except OSError as exc:
        if not str(exc).startswith("cannot listen"):
            raise
        raise ClassifierError(  # the port is in use, or not ours to bind
            ErrorKind.UNAVAILABLE, f"{exc}: choose another port with --port or APP_PORT"
        ) from exc


def _check_port_free(address: str, port: int) -> None:
    """Said before gRPC tries the port (its own failure comes with a log line of its core's)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        # As a server binds: connections of a process that just stopped (TIME_WAIT) do not hold the
        # port, a listening socket does (gRPC itself binds with SO_REUSEPORT, so it would not notice).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise OSError(f"cannot listen on {address}:{port}: {exc.strerror}") from exc


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    return run_demo(settings, args.images, args.model, args.top_k, ui_port=args.ui_port if args.ui else None)


def _ui(args: argparse.Namespace, settings: Settings) -> int:
    from .ui.server import serve_ui

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_ui(settings, args.port, args.app_id)


def _invoke(args: argparse.Namespace, settings: Settings) -> int:
    from dapr.clients import DaprClient

    query = tuple((k, str(v)) for k, v in (("model", args.model), ("top_k", args.top_k)) if v is not None)
    failed = 0
    with _sidecar(DaprClient) as client:
        for image in args.images:
            try:
                response = client.invoke_method(
                    args.app_id,
                    "classify",
                    data=_read(image),
                    content_type="application/octet-stream",
                    http_verb="POST",
                    http_querystring=query or None,
                )
                print(json.dumps({"image": str(image), **_json_answer(response.data)}))
            except Exception as exc:  # one line per failed image, then the next image
                failed += 1
                print(f"classifier: {image}: {_call_error(exc)}", file=sys.stderr)
    return 1 if failed else 0


def _call_error(exc: Exception) -> str:
    """A failed call through the sidecar in one line: the service's error code (the ErrorInfo
    reason in the status daprd passes on) and message, or daprd's own error code when the call
    never reached the service. Takes the SDK's DaprHttpError and DaprGrpcError, a plain
    grpc.RpcError (InvokeService) and our own errors."""
    import grpc
    from dapr.clients.exceptions import DaprHttpError
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    if isinstance(exc, DaprHttpError):  # daprd's HTTP API: the status as JSON
        try:
            body = json.loads(exc.raw_response_bytes or b"{}")
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        raw_details = body.get("details")
        details = raw_details if isinstance(raw_details, list) else []
        reasons = [
            str(d.get("reason"))
            for d in details
            if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.ErrorInfo")
        ]
        code = reasons[0].lower() if reasons else str(body.get("errorCode") or "error")
        return f"{code} (HTTP {exc.status_code}): {body.get('message') or exc.message}"
    code_of, details_of = getattr(exc, "code", None), getattr(exc, "details", None)
    if isinstance(exc, grpc.RpcError) and callable(code_of) and callable(details_of):
        code = str(getattr(code_of(), "name", code_of())).lower()
        get_status = getattr(exc, "get_grpc_status", None)  # DaprGrpcError keeps the status it read
        try:
            status = get_status() if callable(get_status) else rpc_status.from_call(exc)
        except AttributeError:  # a grpc.RpcError that is not a call: no trailing metadata
            status = None
        for detail in status.details if status is not None else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                code = info.reason.lower()
        return f"{code}: {details_of()}"
    if isinstance(exc, ClassifierError):
        return exc.message
    return str(exc) or type(exc).__name__


def _stream_options(publish: argparse.ArgumentParser) -> None:
    source = publish.add_mutually_exclusive_group()
    source.add_argument("--video", type=Path, metavar="FILE", help="publish the frames of a video, as JPEG")
    source.add_argument("--frames", type=Path, metavar="DIR", help="publish a folder's images as a stream")
    publish.add_argument(
        "--fps",
        type=_non_negative_float,
        help="frames per second (default: the video's rate; 10 for --frames)",
    )
    publish.add_argument("--stream-id", metavar="ID", help="default: the file's name and a random suffix")
    publish.add_argument("--max-frames", type=_positive_int, metavar="N")
    publish.add_argument(
        "--max-inflight", type=_positive_int, default=8, metavar="N", help="publishes at once"
    )


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def _publish(args: argparse.Namespace, settings: Settings) -> int:
    from dapr.clients import DaprClient

    from .streams import commands as streams

    serve = ServeSettings.from_env()
    stream = args.video is not None or args.frames is not None
    if stream and args.images:
        raise invalid_argument("give images, or --video FILE, or --frames DIR: not both")
    if not stream and not args.images:
        raise invalid_argument("nothing to publish: give images, or --video FILE, or --frames DIR")
    stream_only = ("--fps", args.fps), ("--stream-id", args.stream_id), ("--max-frames", args.max_frames)
    if not stream and any(value is not None for _, value in stream_only):
        used = next(name for name, value in stream_only if value is not None)
        raise invalid_argument(f"{used} is for a stream: give --video FILE or --frames DIR")
    if stream:
        request = streams.PublishRequest(
            video=args.video,
            frames=args.frames,
            fps=args.fps,
            stream_id=None if args.stream_id is None else streams.check_stream_id(args.stream_id),
            max_frames=args.max_frames,
            max_inflight=args.max_inflight,
            model=args.model,
            top_k=args.top_k,
        )
        source = streams.open_source(request)  # a bad file fails before the sidecar is waited for
        with _sidecar(lambda: DaprClient(max_grpc_message_length=serve.max_message_bytes)) as client:
            return streams.publish_frames(client, serve, request, source)
    failed = 0
    with _sidecar(lambda: DaprClient(max_grpc_message_length=serve.max_message_bytes)) as client:
        for image in args.images:
            body: dict[str, object] = {"image_base64": base64.b64encode(_read(image)).decode()}
            if args.model:
                body["model"] = args.model
            if args.top_k:
                body["top_k"] = args.top_k
            # The event id is the result's correlation_id: choose it, so the caller knows it.
            event_id = str(uuid.uuid4())
            try:
                client.publish_event(
                    serve.pubsub,
                    serve.images_topic,
                    json.dumps(body),
                    data_content_type="application/json",
                    publish_metadata={"cloudevent.id": event_id},
                )
            except Exception as exc:  # one line per failed image, then the next image
                failed += 1
                print(f"classifier: {image}: not published: {_call_error(exc)}", file=sys.stderr)
                continue
            print(f"published {image} to {serve.pubsub}/{serve.images_topic} as event {event_id}")
    return 1 if failed else 0


def _results(args: argparse.Namespace, settings: Settings) -> int:
    from dapr.clients import DaprClient

    from .streams import commands as streams

    request = streams.FollowRequest(
        stream_id=None if args.stream_id is None else streams.check_stream_id(args.stream_id),
        follow=args.follow,
        idle_s=args.idle,
        count=args.count,
        window=args.window,
        wait_s=args.wait,
        as_json=args.json,
    )
    serve = ServeSettings.from_env()
    with _sidecar(lambda: DaprClient(max_grpc_message_length=serve.max_message_bytes)) as client:
        return streams.follow_results(client, serve, request)


def _classify(args: argparse.Namespace, settings: Settings) -> int:
    from .pipeline import Classifier  # imported here: the other commands need no guest

    guest_wasm = None
    check_name(args.model)
    if args.guest_args is not None and not args.guest and settings.guest is None:
        raise invalid_argument(
            "--guest-args: the embedded guest takes no args template; give it with a command-style "
            "guest, --guest FILE.wasm"
        )
    if args.guest_args is not None:
        settings = replace(settings, guest_args=parse_template(args.guest_args))
    if args.guest:  # a .wasm file, or a stored or shipped guest's name, as CLASSIFIER_GUEST
        source = _named_guest(settings, args.guest)
        if source.origin == "stored" and args.guest_args is not None:
            raise invalid_argument(
                f"--guest-args: the stored guest {args.guest!r} keeps its args in the store "
                "(`classifier guests put NAME FILE.wasm --args TEMPLATE`); give --guest-args "
                "only with a .wasm file or a shipped guest"
            )
        if source.origin == "stored":
            settings = replace(settings, guest_args=source.args)
        guest_wasm = source.wasm
    # --guest runs every image, whatever guest the model names.
    classifier = Classifier(settings, guest_wasm=guest_wasm, guest_overrides_models=bool(args.guest))
    failed = 0
    worker = ThreadPoolExecutor(1, thread_name_prefix="guest")
    try:
        try:
            classifier.model(args.model)  # an unknown model fails once, before any image
        except ClassifierError as exc:
            if args.json:  # every image gets its JSON line, as when an image fails
                for image in args.images:
                    print(json.dumps({"image": str(image), "error": exc.to_dict()}))
            if exc.kind != ErrorKind.NOT_FOUND:
                raise
            raise ClassifierError(
                exc.kind,
                f"{exc.message}: store it with `classifier models put {args.model} MODEL.tflite`, "
                "or see `classifier models list`",
            ) from exc
        for image in args.images:
            try:
                response = _interruptible(
                    functools.partial(classifier.classify, _read(image), args.model, args.top_k),
                    classifier.host,
                    worker,
                )
            except ClassifierError as exc:
                failed += 1
                if args.json:
                    print(json.dumps({"image": str(image), "error": exc.to_dict()}))
                print(f"classifier: {image}: {exc.message}", file=sys.stderr)
                continue
            if args.json:
                print(json.dumps({"image": str(image), **response}))
            else:
                print(f"{image}: {_summary(response)}")
    finally:
        worker.shutdown()
        classifier.close()
    return 1 if failed else 0


def _named_guest(settings: Settings, reference: str) -> GuestSource:
    """--guest: a .wasm file, or a guest stored with `guests put` in the local store (`classify`
    reads models there too), or a shipped one."""
    from .stores.local import LocalStore

    if not reference.endswith(".wasm") and (os.sep in reference or Path(reference).is_file()):
        raise invalid_argument(
            f"--guest {reference!r}: a guest file's name ends in .wasm (anything else is a stored or "
            "shipped guest's name); rename it, or store it with `classifier guests put NAME FILE.wasm`"
        )
    try:
        return resolve_guest(reference, LocalStore(settings.store_dir))
    except ClassifierError as exc:
        hint = (
            "; give an existing .wasm file, or a stored or shipped guest's name" if is_path(reference) else ""
        )
        raise ClassifierError(exc.kind, f"--guest: {exc.message}{hint}") from exc


def _summary(response: dict[str, Any]) -> str:
    predictions = response.get("predictions")
    if not isinstance(predictions, list):
        return json.dumps(response)
    return ", ".join(
        f"{p.get('label') or p.get('index')} ({p.get('index')}) {float(p.get('score', 0)):.3f}"
        for p in predictions
    )


def _wasm_run(args: argparse.Namespace, settings: Settings) -> int:
    host = WasmHost(settings.module_cache_dir)
    try:
        guest = host.load_guest_file(args.guest)
        call = GuestCall(
            limits=replace(settings.limits, timeout_s=args.timeout),
            named_graphs={
                name: _preload(name, encoding, path, settings.interpreter_threads)
                for name, encoding, path in map(_parse_preload, args.nn_preload)
            },
            graph_cache=GraphCache(num_threads=settings.interpreter_threads),
        )
        preopens = [_parse_dir(spec) for spec in args.dir]
        env = [_parse_env(pair) for pair in args.env]
        with ThreadPoolExecutor(1, thread_name_prefix="guest") as worker:
            result = _interruptible(
                lambda: host.run(guest, args.args, call=call, preopens=preopens, env=env, inherit_stdio=True),
                host,
                worker,
            )
    finally:
        host.close()
    for note in result.call.notes:
        print(f"classifier: {note}", file=sys.stderr)
    if result.trap is not None:
        reason = "deadline exceeded" if result.deadline_exceeded else result.trap
        print(f"classifier: guest trapped: {reason}", file=sys.stderr)
        return EXIT_TRAP
    return result.exit_code or 0


def _interruptible(run_guest: Callable[[], _T], host: WasmHost, worker: ThreadPoolExecutor) -> _T:
    """`run_guest()` on the worker thread: Python takes Ctrl-C in the main thread only, and only
    between bytecodes, never while wasm runs. On Ctrl-C the guest is interrupted (its deadline
    made to pass) and KeyboardInterrupt goes on up (exit 130). One worker for a command's runs:
    LiteRT's interpreters are kept per thread."""
    future = worker.submit(run_guest)
    try:
        while True:
            try:
                return future.result(timeout=0.1)
            except FutureTimeout:
                continue
    except KeyboardInterrupt:
        host.interrupt()
        wait_for_futures([future])
        raise


def _parse_preload(spec: str) -> tuple[str, Encoding, Path]:
    """WasmEdge's NAME:ENCODING:TARGET:PATH, the encoding named as WasmEdge names it."""
    parts = spec.split(":", 3)
    if len(parts) != 4 or not parts[0] or not parts[3]:
        raise invalid_argument(f"--nn-preload {spec!r}: expected NAME:TensorflowLite:CPU:PATH")
    name, encoding_name, target_name, path = parts
    encoding = ENCODING_NAMES.get(encoding_name.lower())
    backend = backend_for(encoding) if encoding is not None else None
    if encoding is None or backend is None:
        known = ", ".join(sorted({e.value for e in ENCODING_NAMES.values() if backend_for(e) is not None}))
        raise invalid_argument(
            f"--nn-preload {spec!r}: encoding {encoding_name!r} has no backend here ({known})"
        )
    target = next((t for t in Target if t.value == target_name.lower()), None)
    if target not in backend.targets:
        raise invalid_argument(
            f"--nn-preload {spec!r}: the {encoding.value} backend does not run on {target_name}"
        )
    return name, encoding, Path(path)


def _preload(name: str, encoding: Encoding, path: Path, threads: int) -> Graph:
    try:
        return load_graph(read_input(path, f"--nn-preload {name}:"), encoding, threads)
    except ValueError as exc:  # the backend's word for a file it cannot load
        raise invalid_argument(
            f"--nn-preload {name}: {path}: {exc}; give a {encoding.value} model file"
        ) from exc


# WasmEdge's encoding names (and the short one for TFLite) -> the backends' encodings.
ENCODING_NAMES = {**{e.value: e for e in Encoding}, "tflite": Encoding.TENSORFLOWLITE}


def _parse_dir(spec: str) -> Preopen:
    writable = spec.endswith(":rw")
    spec = spec.removesuffix(":rw").removesuffix(":ro")
    guest_path, _, host_path = spec.partition(":")
    host = Path(host_path or guest_path)
    if not host.is_dir():
        raise invalid_argument(f"--dir {spec!r}: {host} is not a directory")
    return Preopen(host, guest_path, writable)


def _parse_env(pair: str) -> tuple[str, str]:
    name, sep, value = pair.partition("=")
    if not sep or not name:
        raise invalid_argument(f"--env {pair!r}: expected NAME=VALUE")
    return name, value


def _read(path: Path) -> bytes:
    return read_input(path)


def _text(path: Path, what: str) -> str:
    try:
        return read_input(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_argument(
            f"{what} {path}: not UTF-8 text; give a text file, one label per line"
        ) from None


def _json_answer(data: bytes) -> dict[str, Any]:
    """The service's JSON answer, passed on by the sidecar; anything else is not from this service."""
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ClassifierError(
            ErrorKind.UNAVAILABLE,
            f"the answer is not the service's JSON ({data[:60]!r}): is DAPR_HTTP_PORT a Dapr sidecar's, "
            "and --app-id this service's?",
        )
    return answer
