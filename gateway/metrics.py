"""The gateway's metrics, recorded once with the OTel API (exported to Prometheus and OTLP)."""

from __future__ import annotations

from opentelemetry import metrics


class GatewayMetrics:
    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter("agora.gateway", meter_provider=meter_provider)
        self.requests = meter.create_counter(
            "gateway.requests", description="HTTP requests answered, by route and status"
        )
        # What the gateway's autoscaler reads besides CPU: a gateway waiting on its
        # upstreams holds requests without spending CPU.
        self.in_flight = meter.create_up_down_counter(
            "gateway.requests.in_flight", description="HTTP requests being answered"
        )
        self.in_flight.add(0)  # exported at 0 from the start, not after a first request
        self.duration = meter.create_histogram(
            "gateway.request.duration", unit="s", description="Time to answer a request"
        )
        self.rejections = meter.create_counter(
            "gateway.rejections", description="Requests refused at the edge, by problem type"
        )
        self.upstream_calls = meter.create_counter(
            "gateway.upstream.calls", description="Calls to services and Temporal, by call"
        )
        self.redis_unavailable = meter.create_counter(
            "gateway.redis.unavailable",
            description="Requests admitted (mode=open) or refused (mode=closed) without Redis",
        )
