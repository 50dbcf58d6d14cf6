"""An activity's failure is logged inside its span; a business rejection without noise.

The SDK writes its own "Completing activity as failed" line after the activity's span
has ended (no trace id), and as a WARNING with a traceback for every decline and
every out-of-stock reservation unless the failure is BENIGN.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from agora import temporal
from agora.logs import setup_logging
from workers.inventory.errors import OutOfStock, Shortage

SHORT = Shortage(sku="SKU-1", requested=3, available=1)


def rejection() -> ApplicationError:
    with pytest.raises(ApplicationError) as raised, temporal.business_rejections():
        raise OutOfStock([SHORT])
    return raised.value


class Failing:
    """The next interceptor in the chain: the activity itself, failing with `error`."""

    def __init__(self, error: BaseException):
        self.error = error

    async def execute_activity(self, _: Any) -> Any:
        raise self.error


async def logged_failure(error: BaseException, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The "activity failed" record for `error`, and checks it carries the span's trace id."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("inventory", "INFO")
    tracer = TracerProvider().get_tracer("test")

    async def run_activity() -> None:
        with tracer.start_as_current_span("RunActivity:inventory.reserve") as span:
            trace_ids.append(format(span.get_span_context().trace_id, "032x"))
            await temporal._ActivityLog(Failing(error)).execute_activity(None)  # type: ignore[arg-type]

    trace_ids: list[str] = []
    with pytest.raises(type(error)):
        await ActivityEnvironment().run(run_activity)
    [record] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (record["message"], record["level"]) == ("activity failed", "WARNING")
    assert record["trace_id"] == trace_ids[0]
    return record


async def test_an_unexpected_failure_is_logged_with_its_traceback_inside_the_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = await logged_failure(ConnectionResetError("postgres went away"), monkeypatch)
    assert record["error"] == "ConnectionResetError"
    assert "Traceback" in record["exc_info"] and "postgres went away" in record["exc_info"]


async def test_a_business_rejection_is_logged_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = await logged_failure(rejection(), monkeypatch)
    assert record["error"] == "ApplicationError" and "exc_info" not in record


def test_a_business_rejection_is_benign_so_the_sdk_logs_it_at_debug() -> None:
    assert rejection().category == ApplicationErrorCategory.BENIGN


async def test_the_workflow_sees_a_rejection_as_before_and_benign() -> None:
    # What crosses the server: type, non-retryable and details as the workflows read them.
    converter = DataConverter.default
    failure = Failure()
    await converter.encode_failure(rejection(), failure)
    seen = await converter.decode_failure(failure)
    assert isinstance(seen, ApplicationError)
    assert (seen.type, seen.non_retryable, seen.message) == (
        "OutOfStock",
        True,
        "out of stock: SKU-1 (requested 3, available 1)",
    )
    assert list(seen.details) == [{"sku": "SKU-1", "requested": 3, "available": 1}]
    assert seen.category == ApplicationErrorCategory.BENIGN
