"""Trace context and metrics through the real daprd 1.18 and Redis (issue 13).

daprd continues a caller's W3C trace when its Configuration has tracing on (`samplingRate`):
it sends the app `traceparent` metadata with its own span, child of the caller's, on service
invocation (pkg/api/http: the server span from the caller's header) and on the delivery of an
event (pkg/runtime/pubsub/subscriptions.go:389-405, from the CloudEvent's `traceparent`). The
app publishes each result with `cloudevent.traceparent`, which daprd writes into the result's
CloudEvent (pkg/runtime/pubsub/cloudevents.go:39-57), read here straight from Redis.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from conftest import IMAGES, MODELS
from dapr.clients import DaprClient
from prometheus_client.parser import text_string_to_metric_families
from real_dapr import free_port, sidecar_env, stack, wait_for

from service.stores.dapr import DaprStore

pytestmark = pytest.mark.dapr

BIRD = (IMAGES / "classify" / "bird.jpg").read_bytes()
TRACING = '  tracing:\n    samplingRate: "1"\n'


def counts(port: int, name: str) -> dict[frozenset, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_the_trace_daprd_sends_reaches_the_result_event_and_the_log(tmp_path: Path) -> None:
    metrics_port = free_port()
    with stack(tmp_path, config_spec=TRACING, CLASSIFIER_METRICS_PORT=str(metrics_port)) as built:
        daprd, app = built.daprd, built.app
        model = MODELS / "aiy_birds_v1"
        with sidecar_env(daprd), DaprClient() as client:
            DaprStore(client, tmp_path / "uploader-cache").put(
                "birds",
                (model / "model.tflite").read_bytes(),
                (model / "labels.txt").read_text().splitlines(),
            )
        app.wait_ready()
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        traceparent = f"00-{trace_id}-{caller_span}-01"

        # Invocation: the caller's trace id is in the app's log line and in its error body.
        answer = daprd.invoke("classify", BIRD, "model=birds", headers={"traceparent": traceparent})
        assert answer.status == 200, answer.body
        failed = daprd.invoke("classify", BIRD, "model=nosuch", headers={"traceparent": traceparent})
        assert failed.status == 404
        info = next(d for d in failed.json()["details"] if d["@type"].endswith("ErrorInfo"))
        assert info["metadata"] == {"trace_id": trace_id}, failed.body
        wait_for(
            lambda: len(re.findall(rf"classify transport=invoke .*trace_id={trace_id}", app.log())) == 2,
            30,
            lambda: f"two request lines with trace {trace_id}:\n{app.log()[-3000:]}",
        )
        assert "outcome=not_found" in app.log() and "error=\"model 'nosuch' not found" in app.log()

        # Pub/sub: published with the caller's traceparent; the result event continues that trace.
        event_trace = secrets.token_hex(16)
        event_id = str(uuid.uuid4())
        body = json.dumps({"image_base64": base64.b64encode(BIRD).decode(), "model": "birds"}).encode()
        published = daprd.http(
            "POST",
            f"/v1.0/publish/pubsub/images?metadata.cloudevent.id={event_id}",
            body,
            {"Content-Type": "application/json", "traceparent": f"00-{event_trace}-{caller_span}-01"},
        )
        assert published.status == 204, published.body
        streams = redis.Redis(host="127.0.0.1", port=built.redis.port)

        def result_event() -> dict | None:
            for _, fields in streams.xrange("classifications"):
                event = json.loads(fields[b"data"])
                if event.get("data", {}).get("correlation_id") == event_id:
                    return event
            return None

        event = wait_for(result_event, 60, f"the result of {event_id} on classifications")
        assert event["data"]["predictions"], event
        _, result_trace, result_span, _ = event["traceparent"].split("-")
        assert result_trace == event_trace and result_span not in (caller_span, "0" * 16), event
        assert f"trace_id={event_trace}" in app.log()

        # The same requests, counted by /metrics.
        requests = counts(metrics_port, "classifier_requests_total")
        assert requests == {
            frozenset({"transport": "invoke", "model": "birds", "outcome": "ok"}.items()): 1,
            frozenset({"transport": "invoke", "model": "", "outcome": "not_found"}.items()): 1,
            frozenset({"transport": "pubsub", "model": "birds", "outcome": "ok"}.items()): 1,
        }
        assert counts(metrics_port, "classifier_events_total") == {
            frozenset({"topic": "images", "status": "success"}.items()): 1
        }
