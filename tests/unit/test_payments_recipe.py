"""The payments call recipe of workflows/payments.py, run as its docstring shows it."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from workflows.payments import AUTHORIZE_BUDGET, AUTHORIZE_TIMEOUT, PSP_RETRY

attempts: list[int] = []
asked_at: list[datetime] = []  # the server's (skipped) time of each attempt


@activity.defn(name="payments.authorize")
async def psp_down_authorize(_: str) -> str:
    """A PSP that never answers: every attempt fails as a transient PSP failure does."""
    attempts.append(activity.info().attempt)
    asked_at.append(activity.info().current_attempt_scheduled_time)
    raise ApplicationError("the PSP did not answer", type="PspUnavailable")


@workflow.defn(name="PaymentsRecipe", sandboxed=False)
class RecipeWorkflow:
    @workflow.run
    async def run(self, task_queue: str) -> str:
        return await workflow.execute_activity(
            "payments.authorize",
            "card",
            result_type=str,
            task_queue=task_queue,
            start_to_close_timeout=AUTHORIZE_TIMEOUT,
            schedule_to_close_timeout=AUTHORIZE_BUDGET,
            retry_policy=PSP_RETRY,
        )


async def test_the_recipe_gives_up_on_a_psp_that_never_answers(
    env: WorkflowEnvironment,
) -> None:
    attempts.clear()
    asked_at.clear()
    queue = f"recipe-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[RecipeWorkflow],
        activities=[psp_down_authorize],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        with pytest.raises(WorkflowFailureError) as failure:
            await env.client.execute_workflow(
                RecipeWorkflow.run,
                queue,
                id=f"recipe-{uuid.uuid4()}",
                task_queue=queue,
                # Bounds the run if the policy never gives up: it then fails on this.
                execution_timeout=timedelta(hours=1),
            )
    # The caller sees the activity fail once its budget is spent (and can void), not
    # its own run timing out; the fast failures were retried within that budget.
    error = failure.value.cause
    assert isinstance(error, ActivityError)
    assert error.retry_state == RetryState.TIMEOUT
    assert attempts == list(range(1, len(attempts) + 1))
    assert len(attempts) > 1
    assert asked_at[-1] - asked_at[0] < AUTHORIZE_BUDGET
