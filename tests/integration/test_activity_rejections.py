"""A business rejection in an activity, on the real Temporal server: BENIGN, so the SDK
logs it at DEBUG without a traceback, and still not retried, seen by the workflow as
before (type, non_retryable, details)."""

from __future__ import annotations

import logging
import uuid

import pytest
from temporalio.worker import Worker

from agora import temporal
from agora.config import Settings
from tests.integration import rejecting


async def test_a_rejection_is_tried_once_seen_as_before_and_logged_at_debug(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    client = await temporal.connect(settings, sdk_metrics=False)
    queue = f"test-{uuid.uuid4()}"
    rejecting.attempts.clear()
    with caplog.at_level(logging.DEBUG, logger="temporalio.activity"):
        async with Worker(
            client,
            task_queue=queue,
            workflows=[rejecting.RejectionWorkflow],
            activities=[rejecting.reserve_out_of_stock],
        ):
            seen = await client.execute_workflow(
                rejecting.RejectionWorkflow.run, id=f"test-{uuid.uuid4()}", task_queue=queue
            )
    assert seen == ["OutOfStock", True, [{"sku": "SKU-1", "requested": 3, "available": 1}]]
    assert rejecting.attempts == [1]  # the retry policy allows more: non-retryable holds
    completions = [r for r in caplog.records if r.getMessage().startswith("Completing activity")]
    assert completions and all(r.levelno == logging.DEBUG for r in completions), completions
