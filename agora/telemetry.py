"""OpenTelemetry set up in one call: traces and metrics over OTLP to the collector.

Metrics are also exposed for Prometheus on the side port's /metrics (through the
OTel Prometheus reader), so code records every metric once, with the OTel API.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from agora.config import Settings


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def shutdown(self) -> None:
        """Flush what is buffered; called last on graceful shutdown, after the drain's
        budget (agora.service.SHUTDOWN_BUDGET_S): a few seconds at most, even with the
        collector unreachable (it took 12 s, past Kubernetes' SIGKILL)."""
        self.tracer_provider.force_flush(EXPORT_TIMEOUT_S * 1000)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=EXPORT_TIMEOUT_S * 1000)


# One export to the collector, its retries included (the SDK's default is 10 s): a
# collector away costs the process's shutdown no more than this, per provider.
EXPORT_TIMEOUT_S = 2


_installed: Telemetry | None = None

# This process's service.instance.id: on our metrics and on the Temporal SDK's
# (agora.temporal), so both carry the same `instance` label and processes of one
# service never overwrite each other's series in the collector.
INSTANCE_ID = str(uuid.uuid4())

LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


# Statements that only frame a transaction: their spans say nothing the enclosing
# span does not (a ROLLBACK does, and is kept). Named by the asyncpg instrumentation
# after the statement's first word: "BEGIN;" alone, "BEGIN" when it has options
# (`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;`); about a sixth of an order's spans.
TRANSACTION_FRAMING = frozenset({"BEGIN;", "BEGIN", "COMMIT;", "SET", "SAVEPOINT", "RELEASE"})


class WithoutTransactionFraming(Sampler):
    """Drops the spans of transaction-framing statements, defers everything else."""

    def __init__(self, delegate: Sampler):
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if name in TRANSACTION_FRAMING or not is_instrumentation_enabled():
            # Under suppress_instrumentation (work with no request behind it: the outbox
            # relay, the readiness checks) nothing is recorded, the spans of clients that
            # trace themselves (Elasticsearch's) and our own included.
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"WithoutTransactionFraming{{{self._delegate.get_description()}}}"


class _OwnCoin(Sampler):
    """Keeps `ratio` of what it is asked about by a random draw of its own. For the
    traces clients start at the public edge: a client chooses its traceparent's
    sampled flag and trace id, so neither may decide (TraceIdRatioBased on a chosen
    id keeps it every time), or any client could have every request traced."""

    def __init__(self, ratio: float):
        self._ratio = ratio

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        keep = self._ratio >= 1.0 or random.random() < self._ratio
        if not keep:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)

    def get_description(self) -> str:
        return f"OwnCoin{{{self._ratio}}}"


def sampler(settings: Settings, *, edge: bool = False) -> Sampler:
    """Head sampling: the trace's first span decides (AGORA_TRACE_SAMPLE_RATIO, 1.0
    locally and in staging, 0.1 in production) and every later hop follows the
    caller's decision, so a trace is kept whole or not at all. At the public edge
    (`edge`: the gateway) a client's traceparent is continued (its trace id) but its
    decision is not taken: the edge draws its own. With tracing off nothing is
    recorded, whatever the caller decided. BEGIN/COMMIT-like statements are never
    recorded (TRANSACTION_FRAMING)."""
    if not settings.tracing_enabled:
        return ALWAYS_OFF
    ratio = settings.trace_sample_ratio
    if edge:
        own = _OwnCoin(ratio)
        decides = ParentBased(
            TraceIdRatioBased(ratio), remote_parent_sampled=own, remote_parent_not_sampled=own
        )
        return WithoutTransactionFraming(decides)
    return WithoutTransactionFraming(ParentBased(TraceIdRatioBased(ratio)))


def setup_telemetry(settings: Settings, service: str) -> Telemetry:
    """Install global tracer and meter providers for this process (once)."""
    global _installed
    if _installed is not None:
        return _installed
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "agora",
            "service.instance.id": INSTANCE_ID,
            "deployment.environment": settings.profile,
        }
    )
    tracer_provider = TracerProvider(
        resource=resource, sampler=sampler(settings, edge=service == "gateway")
    )
    if settings.tracing_enabled:
        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(
                    endpoint=settings.otlp_endpoint, insecure=True, timeout=EXPORT_TIMEOUT_S
                ),
                schedule_delay_millis=500,
            )
        )
    trace.set_tracer_provider(tracer_provider)
    readers: list[MetricReader] = [PrometheusMetricReader()]
    if settings.tracing_enabled:
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(
                    endpoint=settings.otlp_endpoint, insecure=True, timeout=EXPORT_TIMEOUT_S
                ),
                export_interval_millis=15_000,
            )
        )
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=readers,
        # Latency histograms in seconds get buckets around our targets (a 200 ms p99
        # alert, a 5 ms read path); the SDK's default buckets start at 5 (seconds).
        views=[
            View(
                instrument_type=Histogram,
                instrument_unit="s",
                aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S),
            )
        ],
    )
    metrics.set_meter_provider(meter_provider)
    # Client spans for every database query and Redis command. Elasticsearch's client
    # traces itself through the OpenTelemetry API; gRPC and Kafka spans live in
    # agora.grpc and agora.kafka.
    AsyncPGInstrumentor().instrument()
    RedisInstrumentor().instrument()
    _installed = Telemetry(tracer_provider, meter_provider)
    return _installed
