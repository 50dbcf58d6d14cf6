"""Search's reindex workflow in the time-skipping environment, with stand-in activities."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.search import (
    BackfillInput,
    BackfillResult,
    BeginReindexInput,
    BeginReindexResult,
    DropInput,
    SwapInput,
    SwapResult,
)
from agora.temporal import workflow_runner
from workflows.search import REINDEX_WORKFLOW_ID, ReindexInput, ReindexProgress, ReindexWorkflow

dropped: list[list[str]] = []
begun: list[str] = []


@activity.defn(name="search.begin_reindex")
async def begin_reindex(data: BeginReindexInput) -> BeginReindexResult:
    begun.append(data.version)
    return BeginReindexResult(f"products-{data.version}", "products-old")


@activity.defn(name="search.backfill")
async def backfill(data: BackfillInput) -> BackfillResult:
    return BackfillResult(copied=3, merged=0)


@activity.defn(name="search.swap_alias")
async def swap_alias_retried(data: SwapInput) -> SwapResult:
    # What a swap retried after it succeeded sees: the aliases moved already.
    return SwapResult(old_indices=[])


@activity.defn(name="search.drop_indices")
async def drop_indices(data: DropInput) -> None:
    dropped.append(data.indices)


HISTORIES = Path(__file__).resolve().parent.parent / "histories"


async def reindexed(
    env: WorkflowEnvironment,
    version: str,
    workflow_id: str = REINDEX_WORKFLOW_ID,
    history: str = "",
) -> ReindexProgress:
    """A Reindex of `version` run to its end against this module's activities;
    AGORA_RECORD_HISTORIES=1 keeps a named run's history for the replay test."""
    queue = f"search-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[ReindexWorkflow],
        workflow_runner=workflow_runner(),
        activities=[begin_reindex, backfill, swap_alias_retried, drop_indices],
    ):
        progress = await env.client.execute_workflow(
            ReindexWorkflow.run, ReindexInput(version), id=workflow_id, task_queue=queue
        )
    if history and os.environ.get("AGORA_RECORD_HISTORIES"):
        recorded = await env.client.get_workflow_handle(workflow_id).fetch_history()
        (HISTORIES / f"search-{history}.json").write_text(recorded.to_json())
    return progress


async def test_a_swap_retried_after_it_succeeded_still_drops_the_old_index(
    env: WorkflowEnvironment,
) -> None:
    dropped.clear()
    progress = await reindexed(env, "v2", history="reindex")
    assert dropped == [["products-old"]]
    assert (progress.phase, progress.old_indices) == ("done", ["products-old"])


@pytest.mark.parametrize("version", ["2026 q4", "#", ",", "v:2", "-v2", "v" * 256])
async def test_a_version_no_index_name_can_hold_fails_the_reindex_at_once(
    env: WorkflowEnvironment, version: str
) -> None:
    # Elasticsearch would refuse the index on every retry of begin_reindex, and the
    # workflow would hold the one reindex id for ever.
    begun.clear()
    with pytest.raises(WorkflowFailureError) as failed:
        await reindexed(env, version)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("InvalidArgument", True)
    assert "version" in cause.message
    assert begun == []


@pytest.mark.parametrize("version", ["write", "WRITE", "Write"])
async def test_a_version_naming_the_write_alias_fails_the_reindex_at_once(
    env: WorkflowEnvironment, version: str
) -> None:
    # `<prefix>-write` is the write alias: Elasticsearch calls that index existing,
    # and adding the alias to it would fail on every retry of begin_reindex.
    begun.clear()
    with pytest.raises(WorkflowFailureError) as failed:
        await reindexed(env, version)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("InvalidArgument", True)
    assert "write alias" in cause.message
    assert begun == []


async def test_a_version_is_lower_cased_into_the_index_name(env: WorkflowEnvironment) -> None:
    begun.clear()
    progress = await reindexed(env, "V2.1_b")
    assert (begun, progress.new_index) == (["v2.1_b"], "products-v2.1_b")


@pytest.mark.parametrize("workflow_id", ["search-reindex-2", f"{uuid.uuid4()}", "Search-Reindex"])
async def test_a_reindex_under_another_workflow_id_fails_at_once(
    env: WorkflowEnvironment, workflow_id: str
) -> None:
    # Only the one id keeps reindexes one at a time (the temporal CLI makes up an id
    # when none is given): two at once would swap each other's index out of the write
    # alias, and one would go live having missed updates.
    begun.clear()
    with pytest.raises(WorkflowFailureError) as failed:
        await reindexed(env, "v2", workflow_id)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == ("InvalidArgument", True)
    assert REINDEX_WORKFLOW_ID in cause.message
    assert begun == []


async def test_a_reindex_started_under_another_id_before_the_check_replays_as_it_ran(
    env: WorkflowEnvironment,
) -> None:
    # A run the CLI started under a made-up id before the check must go on where it
    # is when a worker replays it, not fail its workflow task for nondeterminism.
    # The history of a run under the one id is that run's: it recorded no check.
    await reindexed(env, "v2")
    history = await env.client.get_workflow_handle(REINDEX_WORKFLOW_ID).fetch_history()
    made_up = WorkflowHistory(f"{uuid.uuid4()}", history.events)
    result = await Replayer(
        workflows=[ReindexWorkflow], workflow_runner=workflow_runner()
    ).replay_workflow(made_up, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


def test_the_backfill_heartbeat_outlasts_a_slow_page() -> None:
    """One heartbeat per page: a page's two gRPC calls at their timeout and its
    Elasticsearch writes (the client's timeout, three tries) fit in the heartbeat
    timeout, so a slow page is not taken for a dead attempt and redone beside it."""
    from activities.search import PAGE_CALL_TIMEOUT_S
    from workers.search.wiring import MAX_RETRIES, REQUEST_TIMEOUT_S
    from workflows.search import BACKFILL_HEARTBEAT

    elasticsearch_s = REQUEST_TIMEOUT_S * (MAX_RETRIES + 1)
    slow_page_s = 2 * PAGE_CALL_TIMEOUT_S + elasticsearch_s
    assert BACKFILL_HEARTBEAT.total_seconds() > slow_page_s


abandoned: list[str] = []


@activity.defn(name="search.abandon_reindex")
async def abandon_reindex(data: SwapInput) -> bool:
    abandoned.append(data.new_index)
    return True


@activity.defn(name="search.swap_alias")
async def swap_refused(data: SwapInput) -> SwapResult:
    # Another swap took the new index out of the write alias (StaleIndex).
    raise ApplicationError("no longer in the write alias", type="Conflict", non_retryable=True)


def _worker(env: WorkflowEnvironment, queue: str, swap: object) -> Worker:
    return Worker(
        env.client,
        task_queue=queue,
        workflows=[ReindexWorkflow],
        workflow_runner=workflow_runner(),
        activities=[begin_reindex, backfill, swap, drop_indices, abandon_reindex],
    )


async def test_a_reindex_cancelled_before_its_swap_deletes_its_new_index(
    env: WorkflowEnvironment,
) -> None:
    abandoned.clear()
    queue = f"search-{uuid.uuid4()}"
    async with _worker(env, queue, swap_alias_retried):
        handle = await env.client.start_workflow(
            ReindexWorkflow.run, ReindexInput("v3"), id=REINDEX_WORKFLOW_ID, task_queue=queue
        )
        for _ in range(200):  # until it has begun: its index made, not yet filled
            if (await handle.query(ReindexWorkflow.progress)).phase == "propagating":
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the reindex never began")
        await handle.cancel()  # as `temporal workflow cancel` by an operator
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    # Left in the write alias, it took every event twice and was never dropped.
    assert abandoned == ["products-v3"]


async def test_a_reindex_whose_swap_is_refused_deletes_its_new_index(
    env: WorkflowEnvironment,
) -> None:
    abandoned.clear()
    dropped.clear()
    queue = f"search-{uuid.uuid4()}"
    async with _worker(env, queue, swap_refused):
        with pytest.raises(WorkflowFailureError):
            await env.client.execute_workflow(
                ReindexWorkflow.run, ReindexInput("v4"), id=REINDEX_WORKFLOW_ID, task_queue=queue
            )
    assert abandoned == ["products-v4"] and dropped == []


@activity.defn(name="search.swap_alias")
async def swap_slow(data: SwapInput) -> SwapResult:
    await asyncio.sleep(1)  # no heartbeat: it never hears of a cancel, and goes through
    return SwapResult(old_indices=["products-old"])


async def _cancelled_in(env: WorkflowEnvironment, version: str, phase: str) -> None:
    """Run a reindex with the slow swap, cancel it once it reports `phase`; it fails."""
    queue = f"search-{uuid.uuid4()}"
    async with _worker(env, queue, swap_slow):
        handle = await env.client.start_workflow(
            ReindexWorkflow.run, ReindexInput(version), id=REINDEX_WORKFLOW_ID, task_queue=queue
        )
        for _ in range(400):
            if (await handle.query(ReindexWorkflow.progress)).phase == phase:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail(f"the reindex never reached {phase}")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()


async def test_a_reindex_cancelled_while_it_swaps_leaves_its_index(
    env: WorkflowEnvironment,
) -> None:
    # The swap may still go through: deleting the new index then would delete the one
    # searches read.
    abandoned.clear()
    await _cancelled_in(env, "v5", "swapping")
    assert abandoned == []


async def test_a_reindex_cancelled_after_its_swap_still_drops_the_old_index(
    env: WorkflowEnvironment,
) -> None:
    # Cancelled in the drop's grace, the old index (still taking no events, read by
    # nothing) was left for good.
    dropped.clear()
    await _cancelled_in(env, "v6", "dropping")
    assert dropped == [["products-old"]]
    if os.environ.get("AGORA_RECORD_HISTORIES"):
        recorded = await env.client.get_workflow_handle(REINDEX_WORKFLOW_ID).fetch_history()
        (HISTORIES / "search-reindex-cancelled-after-swap.json").write_text(recorded.to_json())
