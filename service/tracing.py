"""W3C trace context through the service, and optional OTLP export of spans per stage.

A request's trace comes from its `traceparent` / `tracestate`: the invocation's gRPC metadata
(daprd sends it), else the CloudEvent's extensions of a pub/sub event (the publisher's), else a
new trace. daprd sends an all-zero traceparent when its tracing is off: that is no trace.
The request is a span of its own (a new span id, child of the caller's), which the published
result event carries on: metadata `cloudevent.traceparent` / `cloudevent.tracestate`, which
daprd writes into the result's CloudEvent (dapr pkg/runtime/pubsub/cloudevents.go:39-57).

With OTEL_EXPORTER_OTLP_ENDPOINT set, `SpanExporter` sends each request's span and one child
span per stage over OTLP (the OpenTelemetry SDK, imported only then: `pip install
dapr-wasm-classifier[otel]`); unset, nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceContext:
    """A request's place in a trace: its own span and the caller's (empty for a new trace)."""

    trace_id: str
    span_id: str
    parent_id: str = ""
    flags: str = "01"
    tracestate: str = ""

    @property
    def traceparent(self) -> str:
        """The W3C traceparent of this request's span, for what it calls or publishes."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @property
    def sampled(self) -> bool:
        return int(self.flags, 16) & 1 == 1


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid, non-zero W3C traceparent, else None."""
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "ff":
        return None
    _, trace_id, parent_id, flags = match.groups()
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def _random_bits(bits: int) -> int:
    """A new trace or span id, never all zeros (invalid in W3C trace context). Not from the OS's
    CSPRNG, as OpenTelemetry's own id generator: ids need to be unique, not secret, and a
    getrandom system call per id costs more than the rest of the trace context."""
    return random.getrandbits(bits) or 1


def _random_id(bits: int) -> str:
    return f"{_random_bits(bits):0{bits // 4}x}"


def continue_trace(*carriers: Mapping[str, Any]) -> TraceContext:
    """The request's trace: from the first carrier with a valid traceparent (and its
    tracestate), else a new trace; either way a new span id for the request."""
    for carrier in carriers:
        parsed = parse_traceparent(str(carrier.get("traceparent") or ""))
        if parsed is not None:
            trace_id, parent_id, flags = parsed
            tracestate = str(carrier.get("tracestate") or "")
            return TraceContext(trace_id, _random_id(64), parent_id, flags, tracestate)
    return TraceContext(_random_id(128), _random_id(64))


def event_trace(delivery: TraceContext, extensions: Mapping[str, Any]) -> TraceContext:
    """An event's trace: daprd's delivery span (the call's metadata, with its tracing on), else
    the CloudEvent's (the publisher's). daprd's span keeps no tracestate: the CloudEvent's is used."""
    if not delivery.parent_id:
        return continue_trace(extensions)
    if not delivery.tracestate and extensions.get("tracestate"):
        parsed = parse_traceparent(str(extensions.get("traceparent") or ""))
        if parsed is not None and parsed[0] == delivery.trace_id:
            return replace(delivery, tracestate=str(extensions["tracestate"]))
    return delivery


def publish_metadata(trace: TraceContext) -> dict[str, str]:
    """The publish metadata by which daprd puts the trace into a published CloudEvent."""
    metadata = {"cloudevent.traceparent": trace.traceparent}
    if trace.tracestate:
        metadata["cloudevent.tracestate"] = trace.tracestate
    return metadata


class SpanExporter:
    """OTLP export of request and stage spans; built only when OTEL_EXPORTER_OTLP_ENDPOINT is set.

    Spans are made from the request's recorded timings after it ends (the stages are consecutive
    durations), with the ids the request already carries, and handed to the SDK's batch processor
    (export in the background, off the request's path)."""

    def __init__(self, service_name: str) -> None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and _HEADERS, _TIMEOUT, ...) itself.
        self._processor = BatchSpanProcessor(OTLPSpanExporter())
        self._resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})

    @classmethod
    def from_env(cls, service_name: str = "image-classifier") -> SpanExporter | None:
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
            return None
        return cls(service_name)

    def export(
        self,
        trace: TraceContext,
        name: str,
        started_ns: int,
        timings: Mapping[str, float],
        attributes: Mapping[str, str | int],
        error: str | None,
    ) -> None:
        """The request's span and, laid end to end from its start, one child span per stage
        (`decode` and `inference` are the host work inside `guest`, so they are its children)."""
        if not trace.sampled:
            return
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        trace_id, flags = int(trace.trace_id, 16), TraceFlags(int(trace.flags, 16))

        def context(span_id: int) -> SpanContext:
            return SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)

        request_context = context(int(trace.span_id, 16))
        parent = (
            SpanContext(trace_id, int(trace.parent_id, 16), is_remote=True, trace_flags=flags)
            if trace.parent_id
            else None
        )
        ok, failed = Status(StatusCode.OK), Status(StatusCode.ERROR, error)
        total_ns = int(timings.get("total", 0.0) * 1e9)
        spans = [
            ReadableSpan(
                name=name,
                context=request_context,
                parent=parent,
                resource=self._resource,
                attributes=dict(attributes),
                kind=SpanKind.SERVER,
                start_time=started_ns,
                end_time=started_ns + total_ns,
                status=ok if error is None else failed,
            )
        ]
        mark = started_ns
        guest_context, guest_start = request_context, started_ns
        for stage in ("admit", "guest", "respond"):
            if stage not in timings:
                continue
            seconds = timings[stage]
            if stage == "guest":  # the wasm run, with the host work it asked for
                seconds += timings.get("decode", 0.0) + timings.get("inference", 0.0)
            span_context = context(_random_bits(64))
            if stage == "guest":
                guest_context, guest_start = span_context, mark
            spans.append(self._stage(stage, span_context, request_context, mark, seconds))
            mark += int(seconds * 1e9)
        for stage in ("decode", "inference"):
            if stage in timings:
                span_context = context(_random_bits(64))
                spans.append(self._stage(stage, span_context, guest_context, guest_start, timings[stage]))
                guest_start += int(timings[stage] * 1e9)
        for span in spans:
            self._processor.on_end(span)

    def _stage(self, stage: str, span_context: Any, parent: Any, start_ns: int, seconds: float) -> Any:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanKind

        return ReadableSpan(
            name=stage,
            context=span_context,
            parent=parent,
            resource=self._resource,
            kind=SpanKind.INTERNAL,
            start_time=start_ns,
            end_time=start_ns + int(seconds * 1e9),
        )

    def close(self) -> None:
        self._processor.shutdown()  # exports what is left
