"""The Temporal SDK core's telemetry: its logs reach Python logging, so our JSON lines."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

import pytest
from temporalio.runtime import LogForwardingConfig, TelemetryFilter

from agora import config, temporal
from agora.logs import setup_logging


def test_core_logs_are_forwarded_to_the_temporalio_core_logger() -> None:
    settings = config.load({}, service="orders")
    telemetry = temporal.telemetry_config(settings, sdk_metrics=False)
    assert telemetry.logging is not None
    forwarding = telemetry.logging.forwarding
    assert isinstance(forwarding, LogForwardingConfig)
    assert forwarding.logger is logging.getLogger("temporalio.core")
    assert telemetry.logging.filter == TelemetryFilter(core_level="WARN", other_level="ERROR")


def test_a_forwarded_core_warning_is_a_json_line_with_service_and_trace_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("orders", "INFO")
    telemetry = temporal.telemetry_config(config.load({}, service="orders"), sdk_metrics=False)
    assert telemetry.logging is not None and telemetry.logging.forwarding is not None
    # What the core hands the forwarder (a BufferedLogEntry, built only in Rust), through
    # the SDK's callback the bridge calls: no runtime or server needed.
    entry = SimpleNamespace(
        level=logging.WARNING,
        message="Metrics exporter failed",
        target="temporalio_common::telemetry::metric_export",
        time=1_700_000_000.0,
        fields={},
    )
    telemetry.logging.forwarding._on_logs([entry])
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["service"] == "orders"
    assert line["level"] == "WARNING"
    assert line["logger"] == "temporalio.core"
    assert "metric_export" in line["message"] and "Metrics exporter failed" in line["message"]
    assert line["trace_id"] == ""
