"""Log lines are JSON with service, level, message and the current trace and span ids."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest
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


@pytest.mark.parametrize("level", ["LOUD", "WARN", "FATAL", "NOTSET"])
def test_a_level_not_documented_is_refused_naming_the_variable(level: str) -> None:
    # logging knows WARN, FATAL and NOTSET (everything) too; the docs offer five names.
    with pytest.raises(ValueError, match=rf"AGORA_LOG_LEVEL .*'{level}'"):
        setup_logging("orders", level)


def test_a_python_warning_is_a_json_line_with_service_and_level() -> None:
    program = (
        "import warnings\n"
        "from agora.logs import setup_logging\n"
        "setup_logging('gateway')\n"
        "warnings.warn('this call goes away in 2.0', UserWarning)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    [line] = [json.loads(text) for text in done.stderr.splitlines()]
    assert (line["service"], line["level"], line["logger"]) == ("gateway", "WARNING", "py.warnings")
    assert "this call goes away in 2.0" in line["message"]


UNCAUGHT = """
import threading
from agora.logs import setup_logging
setup_logging("orders")

class Finalized:
    def __del__(self):
        raise ValueError("in a finalizer")

Finalized()
thread = threading.Thread(target=lambda: 1 / 0, name="worker-1")
thread.start()
thread.join()
raise RuntimeError("uncaught in main")
"""


def test_exceptions_python_prints_itself_are_json_lines_too() -> None:
    # A thread's exception, a finalizer's and the main thread's uncaught one were bare
    # multi-line tracebacks: no service or level, unparsed by the pipeline.
    ran = subprocess.run(
        [sys.executable, "-c", UNCAUGHT], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 1
    lines = [json.loads(line) for line in ran.stderr.splitlines() if line.strip()]
    assert all(line["service"] == "orders" for line in lines)
    seen = {(line["level"], line["message"].split(":")[0]) for line in lines}
    assert seen == {
        ("WARNING", "Exception ignored in"),
        ("ERROR", "uncaught exception in thread worker-1"),
        ("CRITICAL", "uncaught exception"),
    }
    tracebacks = " ".join(str(line.get("exc_info", "")) for line in lines)
    assert "in a finalizer" in tracebacks and "ZeroDivisionError" in tracebacks
    assert "uncaught in main" in tracebacks
