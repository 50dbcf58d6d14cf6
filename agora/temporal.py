"""The Temporal client factory: tracing interceptor, SDK metrics over OTLP, one runtime."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import OTELResourceDetector
from temporalio import activity
from temporalio.client import Client, TLSConfig
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    OpenTelemetryConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
)
from temporalio.worker import Interceptor as WorkerInterceptor
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from agora.codec import EncryptionCodec, load_or_create
from agora.config import Settings
from agora.errors import DomainError
from agora.payloads import PayloadConverter
from agora.telemetry import INSTANCE_ID

_runtime: Runtime | None = None
log = logging.getLogger("agora.activity")


def runtime(settings: Settings, *, sdk_metrics: bool = True) -> Runtime:
    """One SDK runtime per process, built from `telemetry_config`.

    Short-lived commands (seed, operator CLIs) pass sdk_metrics=False: they would
    only export a partial batch while exiting.
    """
    global _runtime
    if _runtime is None:
        _runtime = Runtime(telemetry=telemetry_config(settings, sdk_metrics=sdk_metrics))
    return _runtime


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox every worker runs its workflows in: the SDK's default, with
    OpenTelemetry and redis passed through from the process.

    OpenTelemetry as temporalio.contrib.opentelemetry's own plugin passes it through.
    Redis because a collected connection pool imports redis.observability (and
    OpenTelemetry through it) in its `__del__`: run on the workflow thread during an
    activation, that import went through the sandbox's importer, which loaded those
    modules again for the run and warned for each. No workflow calls redis.
    """
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("opentelemetry", "redis")
    )


def telemetry_config(settings: Settings, *, sdk_metrics: bool = True) -> TelemetryConfig:
    """The SDK core's telemetry: its logs and metrics go where ours go."""
    return TelemetryConfig(
        # Left alone, the Rust core writes its own plain-text, colour-coded lines to
        # stderr. Forwarded, they are Python records of logger "temporalio.core", so
        # they get our JSON formatter with service and trace_id (agora.logs); the
        # target (e.g. temporalio_common::telemetry::metric_export) stays in the message.
        logging=LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(
                logger=logging.getLogger("temporalio.core"), append_target_to_name=False
            ),
        ),
        # The SDK's resource: by default it reports as service "temporal-core-sdk"
        # with no instance, so every process's series collide in the collector
        # (one overwrites the other). As ours, they get job="agora/<service>" and
        # this process's instance; the SDK's own `service_name` label stays apart.
        global_tags={
            # OTEL_RESOURCE_ATTRIBUTES' (the chart's deployment.environment.name), which
            # the OpenTelemetry SDK reads for our own telemetry and the SDK core does not.
            **{k: str(v) for k, v in OTELResourceDetector().detect().attributes.items()},
            "service.name": settings.service,
            "service.namespace": "agora",
            "service.instance.id": INSTANCE_ID,
        },
        metrics=OpenTelemetryConfig(url=settings.otlp_endpoint)
        if settings.tracing_enabled and sdk_metrics
        else None,
    )


def data_converter(settings: Settings) -> DataConverter:
    """Payloads are encrypted (agora.codec) before they reach Temporal's history, and so
    are failures' messages and stack traces (moved into an encoded attribute): an
    unexpected error's message can quote the data it failed on (a database error
    echoes the row's values). A failure's type stays in clear for the UI's lists;
    the web UI shows the rest through the codec server, the SDK clients decode it."""
    return dataclasses.replace(
        DataConverter.default,
        payload_converter_class=PayloadConverter,  # an `int` takes an integer (agora.payloads)
        payload_codec=EncryptionCodec(load_or_create(settings)),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def tls_config(settings: Settings) -> TLSConfig | bool:
    """mTLS to a Temporal cluster when a client certificate is configured; TLS alone with
    an API key (Temporal Cloud); plain TCP locally."""
    if settings.temporal_tls_cert:
        return TLSConfig(
            client_cert=Path(settings.temporal_tls_cert).read_bytes(),
            client_private_key=Path(settings.temporal_tls_key).read_bytes(),
            server_root_ca_cert=(
                Path(settings.temporal_tls_ca).read_bytes() if settings.temporal_tls_ca else None
            ),
        )
    return bool(settings.temporal_api_key)


def connected_tls_files(client: Client, settings: Settings) -> dict[Path, bytes]:
    """The client certificate, key and server CA files, each with the contents `client`
    connected with (its TLS is fixed then: `agora.rollover` restarts the process when
    they are renewed); empty without a client certificate."""
    tls = client.service_client.config.tls if settings.temporal_tls_cert else None
    if not isinstance(tls, TLSConfig) or tls.client_cert is None:
        return {}
    loaded = {
        Path(settings.temporal_tls_cert): tls.client_cert,
        Path(settings.temporal_tls_key): tls.client_private_key or b"",
    }
    if settings.temporal_tls_ca:
        loaded[Path(settings.temporal_tls_ca)] = tls.server_root_ca_cert or b""
    return loaded


async def connect(settings: Settings, *, sdk_metrics: bool = True) -> Client:
    """A client whose workflows and activities carry the caller's trace context and
    whose payloads are encrypted. Workers built on it inherit both."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        tls=tls_config(settings),
        api_key=settings.temporal_api_key or None,
        # Order matters: the tracing interceptor is outermost, so the activity log
        # line is written inside the activity's span and carries its trace id.
        interceptors=[TracingInterceptor(), ActivityLogInterceptor()],
        runtime=runtime(settings, sdk_metrics=sdk_metrics),
        data_converter=data_converter(settings),
    )


class ActivityLogInterceptor(ClientInterceptor, WorkerInterceptor):
    """One log line per activity execution, so a trace's logs show every saga step.

    The line names the activity type and the workflow id (which holds the order,
    account or product id), never the activity's input.
    """

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityLog(next)


class _ActivityLog(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        fields: dict[str, Any] = {
            "activity": info.activity_type,
            "workflow_id": info.workflow_id,
            "attempt": info.attempt,
        }
        started = time.perf_counter()
        try:
            result = await super().execute_activity(input)
        except BaseException as error:
            fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
            # The SDK logs the traceback too, but after the span has ended (no trace id).
            log.warning(
                "activity failed",
                exc_info=_unexpected(error),
                extra={**fields, "error": type(error).__name__},
            )
            raise
        fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        log.info("activity completed", extra=fields)
        return result


def _unexpected(error: BaseException) -> bool:
    """Whether a failure's traceback helps a reader: not a business rejection's (a
    decline, out of stock) nor a cancellation's (the workflow or the worker stopping it)."""
    if isinstance(error, ApplicationError) and error.category == ApplicationErrorCategory.BENIGN:
        return False
    return not isinstance(error, (asyncio.CancelledError, CancelledError))


@contextmanager
def business_rejections() -> Iterator[None]:
    """Inside an activity: a domain error becomes a non-retryable ApplicationError of
    its stable `failure_type` with its `failure_details()` (retrying cannot help);
    anything else stays retryable.

    The rejection is BENIGN: the SDK logs it at DEBUG, not as a WARNING with a
    traceback, and leaves it out of its failure metric and the span's error status.
    The category changes neither the retries nor the failure the workflow sees
    (type, non_retryable, details)."""
    try:
        yield
    except DomainError as error:
        raise rejection(error.detail, *error.failure_details(), type=error.failure_type) from None


def rejection(message: str, *details: Any, type: str) -> ApplicationError:
    """A business rejection for an activity to raise: non-retryable and BENIGN, as
    `business_rejections` makes of a domain error (a taken email, an order the
    catalog cannot price). A fault that should be looked into (a broken chain, a
    missing row the saga wrote) stays a plain ApplicationError."""
    return ApplicationError(
        message, *details, type=type, non_retryable=True, category=ApplicationErrorCategory.BENIGN
    )
