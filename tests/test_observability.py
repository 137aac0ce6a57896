"""Observability of `classifier serve` (issue 13): /metrics counts exactly what was sent, the trace
context goes from the caller to the result event and into error bodies, one log line per
request (JSON lines here), and OTLP spans reach a real OTLP receiver.

The service runs as a process beside the daprd double, with wasm/testguests/hostile.c as its
guest: it classifies images like the default guest and traps, loops or exits on request, so
every error kind a request can cause is caused, by invocation and by pub/sub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from build import compile_guest
from conftest import IMAGES, MODELS
from dapr.clients import DaprClient
from daprd import FakeDaprd
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from real_dapr import free_port, sidecar_env, wait_for
from service_process import ROOT, ServiceProcess, error_of, new_daprd, results_for, upload

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
BIRDS_SHA256 = hashlib.sha256((MODELS / "aiy_birds_v1" / "model.tflite").read_bytes()).hexdigest()
WORKERS = 2
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples]:
    """/metrics over HTTP: the text, and every sample by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def grown(after: Samples, before: Samples) -> Samples:
    """What the counters and histograms gained between two scrapes (the other tests of the module
    send requests of their own, in any order)."""
    return {key: n - before.get(key, 0.0) for key, n in after.items() if n != before.get(key, 0.0)}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def hostile(mode: str) -> bytes:
    return f"HOSTILE {mode}\n".encode()


def event_json(image: bytes, model: str) -> bytes:
    return json.dumps({"image_base64": base64.b64encode(image).decode(), "model": model}).encode()


def request_lines(service: ServiceProcess) -> list[dict]:
    """The JSON log lines of classify requests."""
    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line["message"].startswith("classify ")]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("observed")
    guest = compile_guest(ROOT / "wasm" / "testguests" / "hostile.c", workdir / "hostile.wasm")
    daprd = new_daprd()
    upload(daprd, workdir, "birds", "aiy_birds_v1")
    service = ServiceProcess(
        daprd,
        workdir,
        CLASSIFIER_GUEST=str(guest),
        CLASSIFIER_WORKERS=str(WORKERS),
        CLASSIFIER_TIMEOUT_S="1",
        CLASSIFIER_MAX_MESSAGE_MB="4",
        CLASSIFIER_METRICS_PORT=str(free_port()),
        CLASSIFIER_LOG_FORMAT="json",
    )
    try:
        service.wait_ready()
        yield service
        assert service.terminate() == 0
    finally:
        service.kill()
        daprd.close()


def metrics_port(service: ServiceProcess) -> int:
    """The port the service logged for /metrics."""
    for line in service.log().splitlines():
        match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"no metrics line in the log:\n{service.log()[-3000:]}")


def test_metrics_count_exactly_what_was_sent(observed: ServiceProcess) -> None:
    """N requests of every outcome, by invocation and pub/sub: /metrics reads back exactly N of
    each, their durations and stages, the traps by kind, the answers to daprd, the model."""
    daprd = observed.daprd
    port = metrics_port(observed)
    _, before = scrape(port)
    lines_before = len(request_lines(observed))
    assert value(before, "classifier_workers") == WORKERS
    assert value(before, "classifier_inflight_requests") == 0
    assert value(before, "classifier_model_info", model="birds", version="1", sha256=BIRDS_SHA256) == 1
    assert value(before, "classifier_model_updates_total", model="birds", result="activated") == 1

    raw = "application/octet-stream"
    invocations = {  # body, query string, how many, (model label, outcome)
        "ok": (BIRD, "model=birds", 3, ("birds", "ok")),
        "not an image": (b"not an image at all", "model=birds", 2, ("birds", "invalid_argument")),
        "unknown model": (BIRD, "model=nosuch", 2, ("", "not_found")),
        "over the body limit": (b"x" * (5 << 20), "model=birds", 1, ("", "resource_exhausted")),
        "trap": (hostile("trap"), "model=birds", 2, ("birds", "guest_failed")),
        "oob": (hostile("oob"), "model=birds", 1, ("birds", "guest_failed")),
        "exit 3": (hostile("exit 3"), "model=birds", 1, ("birds", "guest_failed")),
        "loop": (hostile("loop"), "model=birds", 1, ("birds", "deadline_exceeded")),
    }
    expected: dict[tuple[str, str, str], int] = {}
    for case, (body, query, count, (model, outcome)) in invocations.items():
        for _ in range(count):
            result = daprd.invoke("classify", body, content_type=raw, querystring=query)
            assert (result.code == grpc.StatusCode.OK) == (outcome == "ok"), (case, result)
        key = ("invoke", model, outcome)
        expected[key] = expected.get(key, 0) + count

    events = {  # data, how many, (model label, outcome), daprd's answer
        "ok": (event_json(BIRD, "birds"), 2, ("birds", "ok"), "SUCCESS"),
        "not an image": (event_json(b"junk", "birds"), 1, ("birds", "invalid_argument"), "DROP"),
        "unknown model": (event_json(BIRD, "nosuch"), 1, ("", "not_found"), "DROP"),
    }
    for case, (data, count, (model, outcome), answer) in events.items():
        for _ in range(count):
            delivery = daprd.deliver("pubsub", "images", data, "application/json", event_id=str(uuid.uuid4()))
            assert delivery.status == answer, (case, delivery)
        key = ("pubsub", model, outcome)
        expected[key] = expected.get(key, 0) + count

    _, after = scrape(port)
    assert value(after, "classifier_inflight_requests") == 0
    after = grown(after, before)
    counted = {
        (dict(labels)["transport"], dict(labels)["model"], dict(labels)["outcome"]): int(n)
        for (name, labels), n in after.items()
        if name == "classifier_requests_total"
    }
    assert counted == expected
    for transport, model in {(t, m) for t, m, _ in expected}:
        sent = sum(n for (t, m, _), n in expected.items() if (t, m) == (transport, model))
        assert (
            value(after, "classifier_request_duration_seconds_count", transport=transport, model=model)
            == sent
        )
        le_30 = value(
            after, "classifier_request_duration_seconds_bucket", transport=transport, model=model, le="30.0"
        )
        assert le_30 == sent  # every request fits the top bucket
    ok = sum(n for (_, _, outcome), n in expected.items() if outcome == "ok")
    admitted = sum(n for (_, model, _), n in expected.items() if model == "birds")
    assert value(after, "classifier_stage_duration_seconds_count", stage="respond") == ok
    for stage in ("admit", "guest", "decode", "inference"):
        assert value(after, "classifier_stage_duration_seconds_count", stage=stage) == admitted, stage
    traps = {
        dict(labels)["reason"]: int(n)
        for (name, labels), n in after.items()
        if name == "classifier_guest_traps_total"
    }
    assert traps == {"unreachable": 2, "memory_out_of_bounds": 1, "interrupt": 1}
    assert value(after, "classifier_events_total", topic="images", status="success") == 2
    assert value(after, "classifier_events_total", topic="images", status="drop") == 2
    assert value(after, "classifier_events_total", topic="images", status="retry") == 0

    # One log line per request, with what the metrics counted, and no traceback for any of them.
    lines = request_lines(observed)[lines_before:]
    assert len(lines) == sum(expected.values())
    logged: dict[tuple[str, str, str], int] = {}
    for line in lines:
        key = (line["transport"], line["model"] if line.get("version") else "", line["outcome"])
        logged[key] = logged.get(key, 0) + 1
        assert TRACE_ID.match(line["trace_id"]) and line["duration_ms"] > 0, line
        assert line["level"] == "INFO" and ("error" in line) == (line["outcome"] != "ok"), line
    assert logged == expected
    assert "Traceback" not in observed.log()
    assert "XNNPACK" not in observed.log()


def test_trace_context_from_the_caller_to_results_and_error_bodies(observed: ServiceProcess) -> None:
    daprd = observed.daprd
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{caller_span}-01"

    # An invocation's error body carries the caller's trace id (ErrorInfo metadata), as its log line.
    failed = daprd.invoke(
        "classify", BIRD, "application/octet-stream", {"traceparent": traceparent}, querystring="model=nosuch"
    )
    assert failed.code == grpc.StatusCode.NOT_FOUND
    assert failed.error_info() == {
        "reason": "NOT_FOUND",
        "domain": "image-classifier",
        "metadata": {"trace_id": trace_id},
    }
    assert any(
        line["trace_id"] == trace_id and line["outcome"] == "not_found" for line in request_lines(observed)
    )
    # daprd's all-zero traceparent (its tracing off) is no trace: a new one is started.
    zero = daprd.invoke(
        "classify", BIRD, "application/octet-stream", {"traceparent": f"00-{'0' * 32}-{'0' * 16}-00"},
        querystring="model=nosuch",
    )  # fmt: skip
    assert TRACE_ID.match(zero.error_info()["metadata"]["trace_id"])
    assert zero.error_info()["metadata"]["trace_id"] != "0" * 32

    # A published image's trace (the publisher's traceparent in the CloudEvent) reaches the result
    # event: same trace id and tracestate, a span id of the service's own.
    event_id = str(uuid.uuid4())
    with sidecar_env(daprd), DaprClient() as client:
        client.publish_event(
            "pubsub",
            "images",
            event_json(BIRD, "birds"),
            data_content_type="application/json",
            publish_metadata={
                "cloudevent.id": event_id,
                "cloudevent.traceparent": traceparent,
                "cloudevent.tracestate": "vendor=abc",
            },
        )
    result = results_for(daprd, event_id)
    assert result["predictions"], result
    published = next(
        p for p in daprd.published("classifications") if json.loads(p.data)["correlation_id"] == event_id
    )
    _, result_trace, result_span, flags = published.metadata["cloudevent.traceparent"].split("-")
    assert (result_trace, flags) == (trace_id, "01") and result_span not in (caller_span, "0" * 16)
    assert published.metadata["cloudevent.tracestate"] == "vendor=abc"

    # A dropped event's error result has the trace id too, the one its log line has.
    bad_id = str(uuid.uuid4())
    assert daprd.deliver("pubsub", "images", event_json(b"junk", "birds"), event_id=bad_id).status == "DROP"
    error = results_for(daprd, bad_id)["error"]
    assert error["code"] == "invalid_argument" and TRACE_ID.match(error["trace_id"]), error
    line = next(line for line in request_lines(observed) if line.get("event") == bad_id)
    assert (line["trace_id"], line["answer"]) == (error["trace_id"], "drop")


def test_every_log_line_is_json(observed: ServiceProcess) -> None:
    for line in observed.log().splitlines():
        record = json.loads(line)  # nothing else reaches stderr: no XNNPACK notice, no plain text
        assert {"time", "level", "logger", "message"} <= set(record), record


# -- deploy/ and the README against the real /metrics -----------------------------------------


def exposed(text: str) -> dict[str, set[str]]:
    """Every metric name a query can use (counters with _total, histograms with _bucket, _sum and
    _count, and the family name), with the label names its samples have."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.setdefault(family.name, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
            names[family.name].update(sample.labels)
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "image-classifier.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_metric_and_label_the_dashboard_queries_exists(observed: ServiceProcess) -> None:
    daprd = observed.daprd  # a request of each kind the panels split by, so every series has a sample
    assert (
        daprd.invoke("classify", BIRD, "application/octet-stream", querystring="model=birds").code.name
        == "OK"
    )
    assert daprd.invoke(
        "classify", hostile("trap"), "application/octet-stream", querystring="model=birds"
    ).details
    assert daprd.deliver("pubsub", "images", event_json(BIRD, "birds")).status == "SUCCESS"
    text, _ = scrape(metrics_port(observed))
    names = exposed(text)
    queries = dashboard_queries()
    assert len(queries) >= 9
    for expr in queries:
        metrics = re.findall(r"\bclassifier_[a-z0-9_]+\b", expr)
        assert metrics, expr
        for metric in metrics:
            assert metric in names, f"{metric} (in {expr}) is not in /metrics"
        labels = set().union(*(names[m] for m in metrics))
        used = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
        used |= set(re.findall(r"[{,]\s*(\w+)\s*[!=]~?", expr))
        assert used - {"le"} <= labels, f"{expr}: labels {used - {'le'} - labels} not on {metrics}"
    panels = {
        panel["title"]
        for panel in json.loads((ROOT / "deploy/grafana/image-classifier.json").read_text())["panels"]
    }
    wanted = ["Request rate", "Error rate by code", "Latency p50 / p99", "Stage split (mean per request)"]
    assert {*wanted, "In flight / workers", "Model versions"} <= panels


def test_the_scrape_config_targets_the_metrics_port_and_path() -> None:
    from service.config import ServeSettings

    config = (ROOT / "deploy" / "prometheus" / "scrape.yml").read_text()
    port = ServeSettings().metrics_port
    assert port == 9464
    assert re.findall(r"metrics_path: (\S+)", config) == ["/metrics", "/metrics"]
    assert f'targets: ["127.0.0.1:{port}"]' in config
    # Kubernetes: the pods' container port named `metrics` (deploy/kubernetes declares it as 9464).
    assert "regex: metrics" in config and "__meta_kubernetes_pod_container_port_name" in config


def test_the_readme_lists_every_metric_the_service_exposes(observed: ServiceProcess) -> None:
    """README "Observability": its metric table names exactly the service's metrics."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Observability\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(classifier_[a-z_]+)`", section, re.MULTILINE))
    text, _ = scrape(metrics_port(observed))
    families = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")  # prometheus-client's creation time of each counter
    }
    assert listed == families


# -- settings --------------------------------------------------------------------------------


def serve_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CLASSIFIER_", "APP_"))}
    return {**base, "APP_PORT": "0", **env}


def run_serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env=serve_env(CLASSIFIER_STORE=str(tmp_path / "store"), **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "text", "expected"),
    [
        ("CLASSIFIER_LOG_FORMAT", "xml", "CLASSIFIER_LOG_FORMAT='xml': must be one of text, json"),
        (
            "CLASSIFIER_METRICS_PORT",
            "99999",
            "CLASSIFIER_METRICS_PORT='99999': must be a port number (0-65535)",
        ),
    ],
)
def test_a_bad_observability_setting_is_one_line(
    tmp_path: Path, variable: str, text: str, expected: str
) -> None:
    result = run_serve(tmp_path, **{variable: text})
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"classifier: {expected}\n")


def test_a_metrics_port_in_use_ends_serve_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(tmp_path, CLASSIFIER_METRICS_PORT=str(port))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"classifier: CLASSIFIER_METRICS_PORT={port}: cannot listen on 127.0.0.1:{port}: "
        "Address already in use (0 turns /metrics off)"
    )
    assert "Traceback" not in result.stderr


def test_without_an_otlp_endpoint_opentelemetry_is_not_imported() -> None:
    """Export off costs nothing: serving a request imports no OpenTelemetry module."""
    code = (
        "import sys\n"
        "from service.config import ServeSettings, Settings\n"
        "from service.edge.app import ClassifierService\n"
        "service = ClassifierService(Settings(), ServeSettings(port=0, metrics_port=0))\n"
        "assert service.spans is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


# -- OTLP export -----------------------------------------------------------------------------


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver (the collector's service, from opentelemetry-proto)."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list:
        return [
            span
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    collector = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, port
    server.stop(0)


def test_spans_per_stage_reach_an_otlp_receiver(receiver: tuple[Receiver, int], tmp_path: Path) -> None:
    collector, port = receiver
    daprd: FakeDaprd = new_daprd()
    service: ServiceProcess | None = None
    try:
        upload(daprd, tmp_path, "birds", "aiy_birds_v1")
        service = ServiceProcess(
            daprd,
            tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_INSECURE="true",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        service.wait_ready()
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        answer = daprd.invoke(
            "classify", BIRD, "application/octet-stream", {"traceparent": f"00-{trace_id}-{caller_span}-01"},
            querystring="model=birds",
        )  # fmt: skip
        assert answer.code == grpc.StatusCode.OK
        wait_for(lambda: len(collector.spans()) >= 6, timeout=30, what="6 spans at the receiver")
        spans = {span.name: span for span in collector.spans() if span.trace_id.hex() == trace_id}
        assert set(spans) == {"classify invoke", "admit", "guest", "decode", "inference", "respond"}
        request = spans["classify invoke"]
        # The parent is daprd's span for the call (the double's, a child of the caller's).
        assert len(request.parent_span_id) == 8 and request.parent_span_id not in (request.span_id, bytes(8))
        for stage in ("admit", "guest", "respond"):
            assert spans[stage].parent_span_id == request.span_id, stage
        for host_work in ("decode", "inference"):
            assert spans[host_work].parent_span_id == spans["guest"].span_id, host_work
        for span in spans.values():
            assert request.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        attributes = {a.key: a.value for a in request.attributes}
        assert attributes["model"].string_value == "birds" and attributes["outcome"].string_value == "ok"
        # The text log's line for the request names the same trace.
        line = next(line for line in service.log().splitlines() if " classify transport=invoke" in line)
        assert f"trace_id={trace_id}" in line and "outcome=ok" in line and "model=birds" in line
        assert "metrics on" not in service.log()  # CLASSIFIER_METRICS_PORT=0 (the harness's): no /metrics

        # A body that does not decode (refused before the pipeline: no stage timings): one span, its error.
        bad_trace = secrets.token_hex(16)
        refused = daprd.invoke(
            "classify",
            b'{"image_base64": ',
            "application/json",
            {"traceparent": f"00-{bad_trace}-{caller_span}-01"},
        )
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
        wait_for(
            lambda: any(span.trace_id.hex() == bad_trace for span in collector.spans()),
            timeout=30,
            what="the refused request's span",
        )
        (bad,) = [span for span in collector.spans() if span.trace_id.hex() == bad_trace]
        assert bad.name == "classify invoke" and bad.end_time_unix_nano >= bad.start_time_unix_nano
        assert {a.key: a.value for a in bad.attributes}["outcome"].string_value == "invalid_argument"
        assert bad.status.message == error_of(refused)["message"]
        assert service.terminate() == 0
    finally:
        if service is not None:
            service.kill()
        daprd.close()
