"""The Temporal client factory: tracing interceptor, SDK metrics over OTLP, one runtime."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import OpenTelemetryConfig, Runtime, TelemetryConfig

from agora.config import Settings

_runtime: Runtime | None = None


def runtime(settings: Settings) -> Runtime:
    """One SDK runtime per process; its metrics go to the collector like ours."""
    global _runtime
    if _runtime is None:
        telemetry = TelemetryConfig(
            # The SDK reports as "temporal-core-sdk"; the tag says which of ours it is.
            global_tags={"agora_service": settings.service},
            metrics=OpenTelemetryConfig(url=settings.otlp_endpoint)
            if settings.tracing_enabled
            else None,
        )
        _runtime = Runtime(telemetry=telemetry)
    return _runtime


async def connect(settings: Settings) -> Client:
    """A client whose workflows and activities carry the caller's trace context."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        interceptors=[TracingInterceptor()],
        runtime=runtime(settings),
    )
