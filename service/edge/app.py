"""The Dapr edge: `classifier serve`, a gRPC app beside a Dapr sidecar.

daprd calls the app through the AppCallback service, served by the SDK's
`dapr.ext.grpc.App`:
- service invocation, method `classify` (raw image, JSON or protobuf body) and `models`;
- pub/sub: images on `images`, results published to `classifications` with the event's
  id as correlation id (and a frame's `stream_id`/`seq`/`captured_at`, docs/streams.md);
  SUCCESS, DROP for bad input (daprd dead-letters it), RETRY for transient faults; in
  batches when bulk subscription is on, each entry answered on its own, the entries spread
  over the workers; at most CLASSIFIER_MAX_INFLIGHT_EVENTS image events at once, more wait;
  update events on `model-updates` refresh a model or the guest;
- `AppCallbackHealthCheck`: healthy once the models are loaded, until shutdown starts.

Start-up never blocks the port: the server starts at once, and a start-up thread waits
for the sidecar (DaprClient blocks until it is healthy), loads the models and warms one
interpreter per worker thread, then reports healthy. SIGTERM stops taking new calls,
lets in-flight ones finish within the grace period, and exits 0.

Each classify request, invoked or from an event, ends in `_finish`: one log line, its metrics
(`service/metrics.py`, served on CLASSIFIER_METRICS_PORT) and, with OTLP export on, its spans;
its trace (`service/tracing.py`) goes on to the published result and into error bodies.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from dapr.clients import DaprClient
from dapr.ext.grpc import (
    App,
    InvokeMethodRequest,
    InvokeMethodResponse,
    SubscriptionMessage,
    TopicEventResponse,
)

from ..config import ServeSettings, Settings
from ..dapr_sdk import grpc_server, sidecar_client, subscribe_bulk
from ..errors import ClassifierError, ErrorKind, invalid_argument
from ..logs import request_line
from ..metrics import Metrics
from ..pipeline import DEFAULT_TOP_K, Classifier, Outcome
from ..stores.base import Store
from ..stores.dapr import DaprStore
from ..stores.local import LocalStore
from ..tracing import SpanExporter, TraceContext, continue_trace, event_trace, publish_metadata
from ..watcher import Watcher
from .answers import TRANSIENT, image_answer, publishes_error, update_answer
from .calls import EdgeInterceptor, current_call
from .classifier_pb2 import ClassifyRequest as ClassifyRequestProto
from .classifier_pb2 import ClassifyResponse as ClassifyResponseProto
from .requests import (
    PROTO_TYPE_NAME,
    ClassifyRequest,
    ImageFetcher,
    StreamFields,
    check_batch_entry,
    check_event_data,
    decode_body,
    from_proto,
    stream_fields_of,
)
from .streams import StreamTracker, result_fields, run_spread

log = logging.getLogger(__name__)

# Threads that receive calls, beyond one per worker: they wait for a worker (the classify pool),
# so daprd's health probe and `models` are answered while every worker is busy. More than
# daprd's pub/sub `concurrency` (8) plus a few invocations; each waiting call holds its message.
RPC_THREADS = 16
# grpc.health.v1.Health/Check, for the kubelet's readiness probe (deploy/kubernetes): SERVING
# while the app is healthy and daprd's last app health probe found it so (daprd forwards calls only
# then), so a pod joins its Service's endpoints (other sidecars call it) only once daprd takes its
# calls. Its two messages have one field each, encoded here rather than with another package:
# HealthCheckResponse{status: SERVING | NOT_SERVING}.
GRPC_HEALTH_SERVICE = "grpc.health.v1.Health"
GRPC_HEALTH_SERVING, GRPC_HEALTH_NOT_SERVING = b"\x08\x01", b"\x08\x02"


def connect_store(settings: Settings, serve: ServeSettings) -> tuple[Store, DaprClient | None]:
    """The Dapr state store when a sidecar is configured, else the local directory store.
    With a sidecar, this blocks until it is healthy (DaprClient does)."""
    if not serve.dapr:
        return LocalStore(settings.store_dir), None
    client = sidecar_client(serve.max_message_bytes)
    return DaprStore(client, settings.module_cache_dir, serve.state_store), client


class ClassifierService:
    """One classifier app: the SDK App, the pipeline behind it, and their lifecycle."""

    def __init__(self, settings: Settings, serve: ServeSettings) -> None:
        self.settings = settings
        self.serve = serve
        self.classifier: Classifier | None = None  # set by start-up
        self.dapr: DaprClient | None = None
        self.watcher: Watcher | None = None
        self.startup_error: str | None = None  # why start-up is not done (health says it)
        self._state = "starting"
        self.ready = threading.Event()
        self.sidecar_saw_healthy = False  # daprd's last app health probe passed
        self.stopping = threading.Event()
        self.failed = threading.Event()  # start-up failed for good: serve() exits 1
        self.fetcher = ImageFetcher(serve.image_url_allowlist, max_bytes=serve.max_message_bytes)
        self.pool = ThreadPoolExecutor(max_workers=serve.workers, thread_name_prefix="classify")
        # Not the classify pool: a health probe queued behind the classify calls was answered,
        # under load, after the probe's timeout; daprd then stopped the subscription, and the
        # events it had read ahead waited a whole processingTimeout to be delivered again.
        self.rpc_threads = ThreadPoolExecutor(
            max_workers=serve.workers + RPC_THREADS, thread_name_prefix="rpc"
        )
        self.metrics = Metrics(serve.workers)
        self.metrics_port = 0  # where /metrics is served once started; 0: not served
        self.spans = SpanExporter.from_env()  # None unless OTEL_EXPORTER_OTLP_ENDPOINT is set
        # Image events being handled: at most max_inflight_events; more wait (so daprd's own
        # delivery limits hold the rest back in Redis, docs/streams.md).
        self.event_places = threading.BoundedSemaphore(serve.max_inflight_events)
        self._events_lock = threading.Lock()
        self._events_now = 0
        self._events_peak = 0
        self.streams = StreamTracker(
            self.metrics.stream_frames_skipped.inc, self.metrics.stream_frames_repeated.inc
        )
        self.app = App(
            thread_pool=self.rpc_threads,
            options=[
                ("grpc.max_send_message_length", serve.max_message_bytes),
                # Twice the limit, so that a body somewhat over it reaches the handlers and gets
                # the same JSON error as every other bad request, not gRPC's bare status.
                ("grpc.max_receive_message_length", 2 * serve.max_message_bytes),
            ],
            interceptors=[EdgeInterceptor(serve.app_api_token)],
        )
        self.app.method("classify")(self.on_classify)
        self.app.method("models")(self.on_models)
        self.app.register_health_check(self.on_health_probe)
        if serve.dapr:  # pub/sub needs a sidecar; the embedded default has none
            self.app.subscribe(serve.pubsub, serve.images_topic, dead_letter_topic=serve.dead_letter_topic)(
                self.on_image
            )
            if serve.bulk_subscribe:
                subscribe_bulk(
                    self.app,
                    serve.pubsub,
                    serve.images_topic,
                    serve.bulk_max_messages,
                    serve.bulk_max_await_ms,
                    self.on_image_batch,
                )
            self.app.subscribe(serve.updates_pubsub, serve.updates_topic)(self.on_update)
        # The SDK's App has no public way to bind port 0 or to stop with a grace period.
        self._server: grpc.Server = grpc_server(self.app)
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    GRPC_HEALTH_SERVICE, {"Check": grpc.unary_unary_rpc_method_handler(self.grpc_health)}
                ),
            )
        )
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> int:
        """Start serving (not yet healthy) and begin start-up in the background; the port."""
        try:
            self.port = self._server.add_insecure_port(f"{self.serve.listen_address}:{self.serve.port}")
        except RuntimeError:  # grpc's way of saying the address is taken or cannot be bound
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {self.serve.listen_address}:{self.serve.port}")
        if self.serve.metrics_port:
            address = f"{self.serve.listen_address}:{self.serve.metrics_port}"
            try:
                self.metrics_port = self.metrics.serve(self.serve.listen_address, self.serve.metrics_port)
            except OSError as exc:
                self._server.stop(0)
                raise ClassifierError(
                    ErrorKind.INVALID_ARGUMENT,
                    f"CLASSIFIER_METRICS_PORT={self.serve.metrics_port}: cannot listen on {address}: "
                    f"{exc.strerror or exc} (0 turns /metrics off)",
                ) from None
            log.info("metrics on http://%s:%d/metrics", self.serve.listen_address, self.metrics_port)
        self._server.start()
        threading.Thread(target=self._start_up, name="start-up", daemon=True).start()
        log.info("listening on %s:%d", self.serve.listen_address, self.port)
        return self.port

    def stop(self, grace_s: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish within the grace period."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        grace = self.serve.shutdown_grace_s if grace_s is None else grace_s
        log.info("stopping: %.1f s for calls in flight", grace)
        self._server.stop(grace).wait()
        if self.watcher is not None:
            self.watcher.stop()
        self.pool.shutdown(wait=False)
        self.rpc_threads.shutdown(wait=False)
        if self.classifier is not None:
            self.classifier.close()
        if self.dapr is not None:
            self.dapr.close()
        self.metrics.close()
        if self.spans is not None:
            self.spans.close()

    def _set_state(self, state: str, reason: str | None = None) -> None:
        """Start-up's state, which health reports: logged once when it changes (starting ->
        waiting for the sidecar / a model / the store -> ready), never once per probe."""
        self.startup_error = reason
        if state != self._state:
            self._state = state
            if reason is None:
                log.info("%s", state)
            else:
                log.warning("%s: %s", state, reason)

    def _connect(self) -> tuple[Store, DaprClient | None]:
        """The store; with a sidecar, wait for it as long as it takes (DaprClient gives up
        after DAPR_HEALTH_TIMEOUT; the sidecar may come later, e.g. restarted by Kubernetes)."""
        while True:
            try:
                return connect_store(self.settings, self.serve)
            except TimeoutError as exc:
                if self.stopping.is_set():
                    raise
                self._set_state("waiting for the Dapr sidecar", f"not healthy yet ({exc})")

    def _start_up(self) -> None:
        try:
            store, self.dapr = self._connect()
            classifier = Classifier(self.settings, store=store)
            classifier.models.events = self.metrics
            self.metrics.model_info.statuses = classifier.models.statuses
            watcher = Watcher(classifier, self.serve.guest_name, self.serve.poll_s)
            self._load(classifier, watcher)
            if self.stopping.is_set():  # stopped while it waited: start nothing more
                classifier.close()
                return
            self.classifier, self.watcher = classifier, watcher
            self._warm_workers(classifier)
            # What start-up made lives as long as the process: out of the collector's way, a
            # full collection no longer walks it (~0.1 s every few hundred requests before).
            gc.freeze()
            watcher.start()
            self.ready.set()
            names = ", ".join(f"{name} v{version}" for name, version in classifier.loaded_models()) or "none"
            self._set_state(f"ready: models {names}")
        except Exception as exc:  # start-up must say why it failed, not die silently
            # What is left is permanent (a missing or broken guest, an unusable store directory,
            # a damaged model): waiting would not help, so the process ends with one line and
            # exit code 1, as an operator (or Kubernetes' restart) expects.
            if isinstance(exc, ClassifierError):
                self.startup_error = exc.message
            elif isinstance(exc, OSError) and exc.strerror:
                self.startup_error = f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")
            else:
                self.startup_error = repr(exc)
                log.exception("start-up failed")
            self.failed.set()

    def _load(self, classifier: Classifier, watcher: Watcher) -> None:
        """Load the models (and the stored guest); retry while the store is unavailable,
        and wait while it holds no model: healthy means able to classify, and until then
        daprd holds pub/sub events back instead of having them dropped."""
        while not self.stopping.is_set():
            try:
                watcher.refresh_guest()
                if classifier.load_models(self.serve.models):
                    self.startup_error = None
                    return
                self._set_state(
                    "waiting for a model",
                    "no model in the store yet: upload one with `classifier models put`",
                )
            except ClassifierError as exc:
                if exc.kind == ErrorKind.NOT_FOUND:  # named by CLASSIFIER_MODELS or CLASSIFIER_GUEST
                    self._set_state("waiting for an upload", exc.message)
                elif exc.kind in TRANSIENT:
                    self._set_state("waiting for the state store", exc.message)
                else:
                    raise
            self.stopping.wait(1.0)

    def _warm_workers(self, classifier: Classifier) -> None:
        """Build one interpreter per model on every worker thread before the first request."""
        workers = self.serve.workers
        barrier = threading.Barrier(workers)

        def warm() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=10)  # holds each task on its own thread
            classifier.warm()

        for future in [self.pool.submit(warm) for _ in range(workers)]:
            future.result()

    # -- health -------------------------------------------------------------------------

    def health(self) -> None:
        """daprd's app health probe. Failing is an UNAVAILABLE status saying why (daprd logs
        it); the interceptor logs nothing for it: the state changes are logged, not probes."""
        if self.stopping.is_set():
            raise ClassifierError(ErrorKind.UNAVAILABLE, "shutting down")
        if not self.ready.is_set():
            raise ClassifierError(
                ErrorKind.UNAVAILABLE, self.startup_error or "starting: models not loaded yet"
            )

    def on_health_probe(self) -> None:
        """daprd's app health probe (AppCallbackHealthCheck)."""
        try:
            self.health()
        except ClassifierError:
            self.sidecar_saw_healthy = False
            raise
        self.sidecar_saw_healthy = True

    def grpc_health(self, _request: bytes, _context: grpc.ServicerContext) -> bytes:
        """grpc.health.v1's Check (any service name). Without a sidecar, `health` alone; with
        one, also daprd's last probe: before its first, daprd refuses the calls it is sent
        ("app is not in a healthy state"), up to a probe interval (5 s) after the models load."""
        try:
            self.health()
        except ClassifierError:
            return GRPC_HEALTH_NOT_SERVING
        return (
            GRPC_HEALTH_SERVING
            if self.sidecar_saw_healthy or not self.serve.dapr
            else GRPC_HEALTH_NOT_SERVING
        )

    def _classifier(self) -> Classifier:
        if self.classifier is None or not self.ready.is_set():
            reason = self.startup_error or "the service is starting: models are not loaded yet"
            raise ClassifierError(ErrorKind.UNAVAILABLE, reason)
        return self.classifier

    # -- service invocation ---------------------------------------------------------------

    def on_classify(self, request: InvokeMethodRequest) -> Any:
        call = current_call()
        started = time.perf_counter()
        started_ns = time.time_ns()
        self.metrics.inflight.inc()
        outcome = Outcome()
        try:
            check_body_size(len(request.proto.value) if request.is_proto() else len(request.data), self.serve)
            if request.is_proto():
                packed = request.proto
                if not packed.type_url.endswith(PROTO_TYPE_NAME):
                    raise invalid_argument(f"expected a packed {PROTO_TYPE_NAME}, got {packed.type_url}")
                message = ClassifyRequestProto()
                packed.Unpack(message)
                classify_request = from_proto(message)
            else:
                classify_request = decode_body(
                    request.data, request.content_type or "", call.querystring, self.fetcher
                )
            outcome = self.run(classify_request, timeout_s=call.time_remaining())
            response = outcome.result()
        except ClassifierError as exc:
            outcome.error = exc
            raise
        except Exception as exc:  # a bug: the interceptor logs it and answers INTERNAL
            outcome.error = ClassifierError(ErrorKind.INTERNAL, f"internal error: {exc}")
            raise
        finally:
            self.metrics.inflight.dec()
            self._finish("invoke", outcome, call.trace, started, started_ns)
            # A raised error's traceback holds this frame: without the outcome, which holds the
            # error, there is no cycle keeping the request's body alive until the GC runs.
            del outcome
        if request.is_proto():
            return to_proto(response)  # the SDK packs it into an Any
        if classify_request.protobuf:
            return InvokeMethodResponse(to_proto(response).SerializeToString(), "application/x-protobuf")
        response = {**response, **result_fields(classify_request.stream)}
        return InvokeMethodResponse(json.dumps(response).encode(), "application/json")

    def on_models(self, request: InvokeMethodRequest) -> InvokeMethodResponse:
        classifier = self._classifier()
        body = classifier.status()
        body["guest"] = {
            "name": self.watcher.guest_name if self.watcher and self.watcher.guest_name else "default",
            **body["guest"],
            "error": self.watcher.guest_error if self.watcher else None,
        }
        body["default_model"] = classifier.default_model(self.serve.default_model)
        return InvokeMethodResponse(json.dumps(body).encode(), "application/json")

    def run(self, request: ClassifyRequest, timeout_s: float | None = None) -> Outcome:
        """A request through the pipeline (the outcome has its response or error); raises a
        ClassifierError only for what stops it before the pipeline (not ready, no model named)."""
        classifier = self._classifier()
        model = request.model or classifier.default_model(self.serve.default_model)
        if model is None:
            raise invalid_argument("name a model: `model` in the request (or ?model= for raw images)")
        top_k = request.top_k if request.top_k is not None else DEFAULT_TOP_K
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def on_worker() -> Outcome:  # the time waiting for a worker counts against the deadline
            remaining = None if deadline is None else deadline - time.monotonic()
            return classifier.run(request.image, model, top_k, timeout_s=remaining)

        return self.pool.submit(on_worker).result()

    def _finish(
        self,
        transport: str,
        outcome: Outcome,
        trace: TraceContext,
        started: float,
        started_ns: int,
        **fields: str,
    ) -> None:
        """The end of a classify request: its metrics, its one log line and its spans."""
        seconds = time.perf_counter() - started
        self.metrics.record(transport, outcome, seconds)
        line: dict[str, Any] = {
            "transport": transport,
            **fields,
            "model": outcome.model,
            "version": outcome.version or None,
            "outcome": outcome.code,
            "duration_ms": round(seconds * 1000, 3),
            "trace_id": trace.trace_id,
        }
        if outcome.error is not None:
            line["error"] = outcome.error.message
        log.info("classify %s", request_line(line), extra={"request": line})
        if self.spans is not None:
            attributes = {k: v for k, v in line.items() if k != "error" and v is not None}
            if "total" not in outcome.timings:
                outcome.timings["total"] = seconds
            error = outcome.error.message if outcome.error is not None else None
            self.spans.export(trace, f"classify {transport}", started_ns, outcome.timings, attributes, error)

    # -- pub/sub ---------------------------------------------------------------------------

    def on_image(self, message: SubscriptionMessage) -> TopicEventResponse:
        trace = event_trace(current_call().trace, message.extensions())
        return TopicEventResponse(self._handle_image(message, trace, in_batch=False))

    def on_image_batch(self, messages: Sequence[SubscriptionMessage]) -> list[str]:
        """A bulk delivery: each entry answered as on_image would, the entries spread over the
        workers. One entry's failure is its own answer, never the batch's."""
        self.metrics.event_batches.inc()

        def handle(message: SubscriptionMessage) -> str:
            try:
                # The call's metadata carries the span of one entry only: each entry's own trace.
                return self._handle_image(message, continue_trace(message.extensions()), in_batch=True)
            except Exception:  # a bug: this entry is redelivered, the others keep their answers
                log.exception("image event %s in a batch", message.id())
                return "retry"

        # Spread from receiving threads: each entry's run() waits on the classify pool, and
        # helpers on that pool itself, all waiting, would leave no worker to run the entries.
        return run_spread(self.rpc_threads, messages, handle, helpers=self.serve.workers - 1)

    def _handle_image(self, message: SubscriptionMessage, trace: TraceContext, *, in_batch: bool) -> str:
        """One image event, within the in-flight bound: its answer; logged and counted."""
        with self._event_place():
            started = time.perf_counter()
            started_ns = time.time_ns()
            self.metrics.inflight.inc()
            answer, outcome = "retry", Outcome(error=ClassifierError(ErrorKind.INTERNAL, "internal error"))
            try:
                answer, outcome = self._answer_image(message, trace, in_batch)
            finally:
                self.metrics.inflight.dec()
                self.metrics.event(self.serve.images_topic, answer)
                self._finish("pubsub", outcome, trace, started, started_ns, event=message.id(), answer=answer)
            return answer

    @contextlib.contextmanager
    def _event_place(self) -> Iterator[None]:
        """A place among the max_inflight_events; waits for one while all are taken."""
        with self.event_places:
            with self._events_lock:
                self._events_now += 1
                if self._events_now > self._events_peak:
                    self._events_peak = self._events_now
                    self.metrics.inflight_events_peak.set(self._events_peak)
            try:
                yield
            finally:
                with self._events_lock:
                    self._events_now -= 1

    def _answer_image(
        self, message: SubscriptionMessage, trace: TraceContext, in_batch: bool = False
    ) -> tuple[str, Outcome]:
        """success, drop or retry for one image event, and how its request went."""
        event_id = message.id()
        outcome = Outcome()
        stream: StreamFields | None = None  # the request's, once decoded
        try:
            if not self.ready.is_set():  # only without daprd's app health check: with it, no delivery yet
                raise ClassifierError(ErrorKind.UNAVAILABLE, f"not ready: {self.startup_error or 'starting'}")
            check_body_size(len(message.raw_data()), self.serve)
            if in_batch:
                check_batch_entry(message.raw_data(), message.data_content_type() or "")
            check_event_data(message.raw_data(), message.data_content_type() or "")
            request = decode_body(message.raw_data(), message.data_content_type() or "", "", self.fetcher)
            stream = request.stream
            if stream.stream_id is not None and stream.seq is not None:
                self.streams.seen(stream.stream_id, stream.seq)
            outcome = self.run(request)
            result = outcome.result()
        except ClassifierError as exc:
            outcome.error = exc.with_traceback(None)  # its frames hold `outcome`: no cycle
            if not publishes_error(exc.kind):
                return image_answer(exc.kind, published=False), outcome
            # The requester learns why; daprd sends the event itself to the dead-letter topic.
            error = {**exc.to_dict(), "trace_id": trace.trace_id}
            if stream is None:  # not decoded: what can be read of the stream fields
                stream = stream_fields_of(message.raw_data())
            failed = {"correlation_id": event_id, "error": error, **result_fields(stream)}
            published = self._publish_result(failed, trace)
            return image_answer(exc.kind, published), outcome
        published = self._publish_result(
            {"correlation_id": event_id, **result, **result_fields(stream)}, trace
        )
        return image_answer(None, published), outcome

    def on_update(self, message: SubscriptionMessage) -> TopicEventResponse:
        answer = self._answer_update(message)
        self.metrics.event(self.serve.updates_topic, answer)
        return TopicEventResponse(answer)

    def _answer_update(self, message: SubscriptionMessage) -> str:
        try:
            update = json.loads(message.raw_data())
            kind, name = str(update.get("kind", "model")), str(update["name"])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring a malformed update event %s", message.id())
            return "drop"
        if self.watcher is None:
            return "retry"
        try:
            self.watcher.on_update(kind, name)
        except ClassifierError as exc:
            log.warning("update of %s %s: %s", kind, name, exc.message)
            return update_answer(exc.kind)
        return update_answer(None)

    def _publish_result(self, result: dict[str, Any], trace: TraceContext) -> bool:
        """Publish a result event continuing the request's trace (daprd writes the metadata's
        traceparent into the CloudEvent)."""
        assert self.dapr is not None
        try:
            self.dapr.publish_event(
                self.serve.pubsub,
                self.serve.results_topic,
                json.dumps(result),
                data_content_type="application/json",
                publish_metadata=publish_metadata(trace),
            )
            return True
        except grpc.RpcError as exc:
            # One line per event (the RpcError's repr is four, with a debug string).
            code = exc.code().name if hasattr(exc, "code") else "?"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            log.warning("publishing result %s: %s: %s", result.get("correlation_id"), code, details)
            return False


def to_proto(response: dict[str, Any]) -> ClassifyResponseProto:
    message = ClassifyResponseProto(
        model=str(response.get("model", "")),
        version=int(response.get("version", 0)),
        elapsed_ms=float(response.get("elapsed_ms", 0.0)),
    )
    result = response.get("result")
    if isinstance(result, int) and not isinstance(result, bool) and result >= 0:
        message.result = result
    predictions = response.get("predictions")
    if isinstance(predictions, list):
        for p in predictions:
            message.predictions.add(
                index=int(p["index"]), label=str(p.get("label") or ""), score=float(p["score"])
            )
    # What a guest answers besides predictions (all of it, for one that has none; describe's
    # sentence): its JSON, verbatim.
    shown = ("model", "version", "elapsed_ms", "predictions", "result")
    if not isinstance(predictions, list) or any(key not in shown for key in response):
        message.output_json = json.dumps({k: v for k, v in response.items() if k not in ("model", "version")})
    return message


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas (unless MALLOC_ARENA_MAX says otherwise): each thread that
    allocates may get an arena of its own (up to 8 per core), and the receiving threads' request
    bodies, freed, stay in theirs. Measured by tests/test_hardening_inputs.py's memory case: RSS
    kept after hostile inputs and a 63 Mpx image +68 MiB uncapped, +17 MiB with 2 arenas.
    False where there is no glibc (nothing to cap)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    M_ARENA_MAX = -8  # glibc's malloc.h
    return mallopt is not None and mallopt(M_ARENA_MAX, arenas) == 1


def serve(settings: Settings, serve_settings: ServeSettings) -> int:
    """Run until SIGTERM or SIGINT; 0 after a clean shutdown."""
    limit_malloc_arenas(max(2, serve_settings.workers))  # before the service's threads start
    service = ClassifierService(settings, serve_settings)
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    while not stop_requested.wait(0.2):
        if service.failed.is_set():
            service.stop(grace_s=0)
            raise ClassifierError(ErrorKind.INVALID_ARGUMENT, f"start-up failed: {service.startup_error}")
    service.stop()
    return 0


def check_body_size(size: int, serve: ServeSettings) -> None:
    if size > serve.max_message_bytes:
        raise ClassifierError(
            ErrorKind.RESOURCE_EXHAUSTED,
            f"the body is {size} bytes, over the limit of {serve.max_message_bytes} "
            f"(CLASSIFIER_MAX_MESSAGE_MB={serve.max_message_bytes >> 20})",
        )
