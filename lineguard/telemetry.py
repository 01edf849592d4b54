"""Metrics (Prometheus) and tracing (OpenTelemetry) shared by every service.

Metric names follow `lineguard_<service>_<what>_<unit>`; counters end in `_total` (prometheus-client adds it),
latencies are histograms in seconds, labels stay low-cardinality (topic, reason, channel; never ids).

Tracing: a real SDK tracer provider is always installed so that trace ids exist and travel; spans are exported over
OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The W3C `traceparent` travels in Kafka headers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, SpanKind, set_span_in_context
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_lock = threading.Lock()
_metrics: dict[str, Any] = {}
_tracing_ready = False

Headers = list[tuple[str, bytes]]


def metric_name(service: str, what: str) -> str:
    return f"lineguard_{service.replace('-', '_')}_{what}"


def _get(kind: type, name: str, doc: str, labels: Sequence[str], registry: CollectorRegistry, **kw: Any) -> Any:
    with _lock:
        metric = _metrics.get(name)
        if metric is None:
            metric = kind(name, doc, list(labels), registry=registry, **kw)
            _metrics[name] = metric
        return metric


def counter(service: str, what: str, doc: str, labels: Sequence[str] = (),
            registry: CollectorRegistry = REGISTRY) -> Counter:
    """A counter `lineguard_<service>_<what>_total` (pass `what` without `_total`)."""
    return _get(Counter, metric_name(service, what), doc, labels, registry)


def gauge(service: str, what: str, doc: str, labels: Sequence[str] = (),
          registry: CollectorRegistry = REGISTRY) -> Gauge:
    return _get(Gauge, metric_name(service, what), doc, labels, registry)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def histogram(service: str, what: str, doc: str, labels: Sequence[str] = (),
              registry: CollectorRegistry = REGISTRY, buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
    """A histogram; `what` should end in a unit, e.g. `batch_duration_seconds`."""
    return _get(Histogram, metric_name(service, what), doc, labels, registry, buckets=tuple(buckets))


# --- tracing --------------------------------------------------------------------------------------------------


def setup_tracing(service: str) -> None:
    """Install the SDK tracer provider once; export over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    global _tracing_ready
    with _lock:
        if _tracing_ready:
            return
        provider = TracerProvider(resource=Resource.create({
            "service.name": os.environ.get("OTEL_SERVICE_NAME", f"lineguard-{service}"),
            "service.namespace": "lineguard",
        }))
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _tracing_ready = True


def tracer() -> trace.Tracer:
    return trace.get_tracer("lineguard")


class _HeaderGetter:
    def get(self, carrier: Headers, key: str) -> list[str] | None:
        for k, v in carrier or ():
            if k == key and v is not None:
                return [v.decode("latin-1") if isinstance(v, bytes) else v]
        return None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier or ()]


class _HeaderSetter:
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode("latin-1")))


_getter = _HeaderGetter()
_setter = _HeaderSetter()


def inject_headers(headers: Headers | None = None, context: otel_context.Context | None = None) -> Headers:
    """Add the current (or given) trace context (W3C traceparent/tracestate) to Kafka headers."""
    headers = list(headers or [])
    propagate.inject(headers, context=context, setter=_setter)
    return headers


def extract_context(headers: Headers | None) -> otel_context.Context:
    return propagate.extract(headers or [], getter=_getter)


def traceparent(headers: Headers | None) -> bytes | None:
    for k, v in headers or ():
        if k == "traceparent":
            return v
    return None


def messaging_attributes(operation: str, topic: str, partition: int | None = None, group: str | None = None,
                         key: Any = None, offset: int | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.name": operation,
        "messaging.operation.type": "send" if operation == "send" else "process",
        "messaging.destination.name": topic,
    }
    if partition is not None:
        attrs["messaging.destination.partition.id"] = str(partition)
    if group:
        attrs["messaging.consumer.group.name"] = group
    if key is not None:
        attrs["messaging.kafka.message.key"] = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    if offset is not None:
        attrs["messaging.kafka.offset"] = offset
    return attrs


@contextmanager
def send_span(topic: str, key: Any = None) -> Iterator[trace.Span]:
    """A PRODUCER span `send <topic>`; headers injected inside it carry its context."""
    with tracer().start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER,
                                        attributes=messaging_attributes("send", topic, key=key)) as span:
        yield span


@contextmanager
def process_span(topic: str, headers: Headers | None, partition: int | None = None, offset: int | None = None,
                 group: str | None = None, links: list[Link] | None = None) -> Iterator[trace.Span]:
    """A CONSUMER span `process <topic>` whose parent is the producer's context carried in the headers."""
    parent = extract_context(headers)
    with tracer().start_as_current_span(
        f"process {topic}", context=parent, kind=SpanKind.CONSUMER, links=links,
        attributes=messaging_attributes("process", topic, partition=partition, group=group, offset=offset),
    ) as span:
        yield span


def start_batch_span(topic: str, group: str | None = None) -> tuple[trace.Span, bytes | None]:
    """A CONSUMER span `process <topic>` for a batch whose records carry no trace context, and the traceparent
    header value that makes the batch's outputs its children. The caller ends the span."""
    span = tracer().start_span(f"process {topic}", kind=SpanKind.CONSUMER,
                               attributes=messaging_attributes("process", topic, group=group))
    return span, traceparent(inject_headers(None, set_span_in_context(span)))
