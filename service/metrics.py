"""The service's Prometheus metrics: one `Metrics` per app, with a registry of its own.

Created once at start-up by the edge, which records each finished request (invocation or
pub/sub event) from its `Outcome`; the model registry tells it of activations and refused
versions; `/metrics` is served on CLASSIFIER_METRICS_PORT (0: not served). A registry per
app, not prometheus-client's global one, so that several apps in one process count apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from .pipeline import STAGES, Outcome
from .registry import ModelStatus

# Requests take ~10 ms to seconds; a guest may run up to CLASSIFIER_TIMEOUT_S (10 s by default).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, *REQUEST_BUCKETS)

TRANSPORTS = ("invoke", "pubsub")
EVENT_STATUSES = ("success", "retry", "drop")


class _ModelInfo(Collector):
    """classifier_model_info{model, version, sha256} = 1 for each active version, read at scrape time."""

    def __init__(self) -> None:
        self.statuses: Callable[[], Sequence[ModelStatus]] | None = None

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "classifier_model_info",
            "The active version of each model (value 1), with its sha256",
            labels=["model", "version", "sha256"],
        )
        for status in self.statuses() if self.statuses is not None else ():
            if status.version > 0:
                family.add_metric([status.name, str(status.version), status.sha256], 1)
        yield family


class Metrics:
    """The app's metrics and their /metrics endpoint. Thread-safe (prometheus-client's are)."""

    def __init__(self, workers: int) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "classifier_requests",
            "Requests answered, by transport, model and outcome (ok or the error code)",
            ["transport", "model", "outcome"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "classifier_request_duration_seconds",
            "Time from a request's arrival at the app to its answer",
            ["transport", "model"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "classifier_stage_duration_seconds",
            "Time in each named stage of the pipeline (admit, guest, decode, inference, respond)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge("classifier_inflight_requests", "Requests being handled now", registry=registry)
        self.workers = Gauge("classifier_workers", "Worker threads (CLASSIFIER_WORKERS)", registry=registry)
        self.workers.set(workers)
        self.model_updates = Counter(
            "classifier_model_updates",
            "Model versions activated, or refused (failed to fetch, verify or load)",
            ["model", "result"],
            registry=registry,
        )
        self.guest_traps = Counter(
            "classifier_guest_traps",
            "Guest runs that ended in a trap, by its kind (wasmtime's trap code)",
            ["reason"],
            registry=registry,
        )
        self.events = Counter(
            "classifier_events",
            "Pub/sub events answered to daprd, by topic and answer (success, retry, drop)",
            ["topic", "status"],
            registry=registry,
        )
        self.inflight_events_peak = Gauge(
            "classifier_inflight_events_peak",
            "The most image events handled at once since start (bound: CLASSIFIER_MAX_INFLIGHT_EVENTS)",
            registry=registry,
        )
        self.event_batches = Counter(
            "classifier_event_batches",
            "Bulk deliveries of image events (Dapr bulk subscribe) answered to daprd",
            registry=registry,
        )
        self.stream_frames_skipped = Counter(
            "classifier_stream_frames_skipped",
            "Frames of a stream (by seq) that never reached the app: trimmed or lost",
            registry=registry,
        )
        self.stream_frames_repeated = Counter(
            "classifier_stream_frames_repeated",
            "Frames of a stream (by seq) that reached the app again (at-least-once delivery)",
            registry=registry,
        )
        self.model_info = _ModelInfo()
        registry.register(self.model_info)
        # Every stage shows from the start; its child is looked up once (labels() costs ~1 us).
        self._stages = [(stage, self.stage_duration.labels(stage)) for stage in STAGES]
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- recording ------------------------------------------------------------------------

    def record(self, transport: str, outcome: Outcome, seconds: float) -> None:
        """One finished request: its count, duration, stages and trap."""
        model = outcome.model if outcome.version > 0 and outcome.model else ""
        self.requests.labels(transport, model, outcome.code).inc()
        self.request_duration.labels(transport, model).observe(seconds)
        timings = outcome.timings
        for stage, histogram in self._stages:
            spent = timings.get(stage)
            if spent is not None:
                histogram.observe(spent)
        if outcome.trap is not None:
            self.guest_traps.labels(outcome.trap).inc()

    def event(self, topic: str, status: str) -> None:
        self.events.labels(topic, status).inc()

    def model_activated(self, name: str, version: int) -> None:
        self.model_updates.labels(name, "activated").inc()

    def model_failed(self, name: str, version: int) -> None:
        self.model_updates.labels(name, "failed").inc()

    # -- the endpoint ---------------------------------------------------------------------

    def serve(self, address: str, port: int) -> int:
        """Serve /metrics on address:port (port 0 is for callers that chose "off" already: a free
        port); the port. Raises OSError if it cannot listen."""
        self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
