"""Log lines are JSON with service, level, message and the current trace and span ids."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from agora.logs import setup_logging


def test_log_line_carries_service_level_and_trace_ids(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("catalog", "INFO")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("agora.test").info("product created", extra={"sku": "SKU-1"})
        context = span.get_span_context()
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["service"] == "catalog"
    assert line["level"] == "INFO"
    assert line["message"] == "product created"
    assert line["sku"] == "SKU-1"
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


def test_log_line_outside_a_span_has_empty_trace_id(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("orders", "INFO")
    logging.getLogger("agora.test").warning("no span here")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["trace_id"] == "" and line["level"] == "WARNING"
