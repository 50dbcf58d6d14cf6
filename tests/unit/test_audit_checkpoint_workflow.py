"""The checkpoint workflow signs before it makes partitions: making them may wait
behind readers of the log and be retried without end, and signing must not wait."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.audit import PartitionsEnsured, SignCheckpointInput, SignedCheckpoint
from agora.temporal import workflow_runner
from workflows.audit import SignCheckpointWorkflow

HISTORIES = Path(__file__).parents[1] / "histories"

signed: list[str] = []


@activity.defn(name="audit.sign_checkpoint")
async def sign_checkpoint(data: SignCheckpointInput) -> SignedCheckpoint:
    signed.append(data.idempotency_key)
    return SignedCheckpoint(7, "ab" * 32, "2026-11-28T00:00:00+00:00", "key-1", True)


@activity.defn(name="audit.ensure_partitions")
async def partitions_locked_out() -> PartitionsEnsured:
    # As asyncpg.LockNotAvailableError behind a long verification: retried.
    raise ApplicationError("canceling statement due to lock timeout", type="LockNotAvailable")


def _worker(env: WorkflowEnvironment, queue: str, *activities: Callable[..., Any]) -> Worker:
    """A worker of the checkpoint workflow with these stand-ins for its activities."""
    return Worker(
        env.client,
        task_queue=queue,
        workflows=[SignCheckpointWorkflow],
        workflow_runner=workflow_runner(),
        activities=list(activities),
    )


async def test_a_checkpoint_is_signed_while_partitions_wait_for_their_lock(
    env: WorkflowEnvironment,
) -> None:
    signed.clear()
    queue = f"audit-{uuid.uuid4()}"
    async with _worker(env, queue, sign_checkpoint, partitions_locked_out):
        handle = await env.client.start_workflow(
            SignCheckpointWorkflow.run,
            id=f"audit-checkpoint-{uuid.uuid4()}",
            task_queue=queue,
            execution_timeout=timedelta(minutes=15),  # a schedule's run bound
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    assert len(signed) == 1
    assert isinstance(failed.value.cause, ActivityError), repr(failed.value.cause)
    # The partitions step gives up on its own (2 min), not held until the run's bound
    # (15 min): the runs due meanwhile (every 5 min) are not skipped.
    run = await handle.describe()
    assert run.close_time is not None
    assert run.close_time - run.start_time < timedelta(minutes=5)


async def test_a_run_signs_first_then_makes_partitions(env: WorkflowEnvironment) -> None:
    """(A run started before the patch made partitions first: its committed history,
    tests/histories/audit-checkpoint-v1.json, replays in test_order_replay.py.)"""

    @activity.defn(name="audit.ensure_partitions")
    async def made() -> PartitionsEnsured:
        return PartitionsEnsured(created=0)

    queue = f"audit-{uuid.uuid4()}"
    workflow_id = f"audit-checkpoint-{uuid.uuid4()}"
    async with _worker(env, queue, sign_checkpoint, made):
        await env.client.execute_workflow(
            SignCheckpointWorkflow.run, id=workflow_id, task_queue=queue
        )
    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled == ["audit.sign_checkpoint", "audit.ensure_partitions"]


async def test_a_signing_refused_for_good_still_makes_the_partitions(
    env: WorkflowEnvironment,
) -> None:
    # A broken chain refuses every checkpoint; the partitions were skipped with it, and
    # two months on audit could not start (a month with rows in the default partition
    # cannot be made).
    made: list[int] = []

    @activity.defn(name="audit.sign_checkpoint")
    async def chain_broken(_: SignCheckpointInput) -> SignedCheckpoint:
        raise ApplicationError(
            "the chain is broken at 41", type="AuditChainBroken", non_retryable=True
        )

    @activity.defn(name="audit.ensure_partitions")
    async def ensure() -> PartitionsEnsured:
        made.append(1)
        return PartitionsEnsured(created=1)

    queue = f"audit-{uuid.uuid4()}"
    workflow_id = f"audit-checkpoint-{uuid.uuid4()}"
    async with _worker(env, queue, chain_broken, ensure):
        with pytest.raises(WorkflowFailureError) as failed:
            await env.client.execute_workflow(
                SignCheckpointWorkflow.run, id=workflow_id, task_queue=queue
            )
    assert isinstance(failed.value.cause, ActivityError), repr(failed.value.cause)
    assert made == [1]
    if os.environ.get("AGORA_RECORD_HISTORIES"):
        history = await env.client.get_workflow_handle(workflow_id).fetch_history()
        (HISTORIES / "audit-checkpoint-unsigned.json").write_text(history.to_json())
