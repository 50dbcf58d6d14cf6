"""A one-step workflow for the payments tests: runs one payments activity as the saga would.

The activity runs on `agora-payments` in the real payments process; this
workflow (on the test's own task queue) only sets the timeout and retry
policy the test asks for. Kept in its own small module for the sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.payments import (
        TASK_QUEUE,
        AuthorizeInput,
        CaptureInput,
        RefundInput,
        VoidInput,
    )


@dataclass
class PaymentStep:
    activity: str  # "payments.authorize" | "payments.capture" | "payments.void" | "payments.refund"
    authorize: AuthorizeInput | None = None
    capture: CaptureInput | None = None
    void: VoidInput | None = None
    refund: RefundInput | None = None
    timeout_s: float = 20.0
    max_attempts: int = 5


@workflow.defn(name="PaymentsTestStep")
class PaymentStepWorkflow:
    @workflow.run
    async def run(self, step: PaymentStep) -> Any:
        arg = step.authorize or step.capture or step.void or step.refund
        return await workflow.execute_activity(
            step.activity,
            arg,
            task_queue=TASK_QUEUE,
            start_to_close_timeout=timedelta(seconds=step.timeout_s),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=100),
                maximum_interval=timedelta(milliseconds=500),
                maximum_attempts=step.max_attempts,
            ),
        )
