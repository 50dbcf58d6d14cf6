"""The Temporal client factory: tracing interceptor, SDK metrics over OTLP, one runtime."""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import DataConverter
from temporalio.runtime import OpenTelemetryConfig, Runtime, TelemetryConfig

from agora.codec import EncryptionCodec, load_or_create
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


def data_converter(settings: Settings) -> DataConverter:
    """Payloads are encrypted (agora.codec) before they reach Temporal's history."""
    return dataclasses.replace(
        DataConverter.default, payload_codec=EncryptionCodec(load_or_create(settings))
    )


async def connect(settings: Settings) -> Client:
    """A client whose workflows and activities carry the caller's trace context and
    whose payloads are encrypted. Workers built on it inherit both."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        interceptors=[TracingInterceptor()],
        runtime=runtime(settings),
        data_converter=data_converter(settings),
    )
