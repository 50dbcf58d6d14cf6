"""Inventory's workflows in the time-skipping environment, with stand-in activities."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.inventory import (
    ExpireDueInput,
    ExpireDueResult,
    ReleaseInput,
    ReleaseResult,
    ReservationTimeoutInput,
    RestockInput,
    RestockResult,
    SetStockInput,
    SetStockResult,
    StockLine,
    StockSnapshot,
)
from agora.temporal import workflow_runner
from workflows.inventory import (
    SWEEP_BATCHES,
    ReservationSweepWorkflow,
    ReservationTimeoutWorkflow,
    RestockWorkflow,
    SeedStockInput,
    SeedStockWorkflow,
)

calls: list[Any] = []


@activity.defn(name="inventory.release")
async def release(data: ReleaseInput) -> ReleaseResult:
    calls.append((data, activity.info().current_attempt_scheduled_time))
    return ReleaseResult(data.reservation_id, "expired", released=True)


# How many reservations the stand-in sweep finds due, per call, in order.
due_batches: list[int] = []


@activity.defn(name="inventory.expire_due")
async def expire_due(data: ExpireDueInput) -> ExpireDueResult:
    calls.append(data)
    found = due_batches.pop(0) if due_batches else 0
    # The cursor: the batch's last reservation (here the batch's number).
    return ExpireDueResult(
        expired=found,
        more=found == data.limit,
        last_expires_at="2030-01-01T00:00:00+00:00",
        last_id=f"batch-{len(calls)}",
    )


@activity.defn(name="inventory.restock")
async def restock(data: RestockInput) -> RestockResult:
    if data.quantity > 100:
        raise ApplicationError("too many", type="InvalidQuantity", non_retryable=True)
    level = StockSnapshot(data.sku, data.quantity, 0, data.quantity, 1, "2030-01-01T00:00:00+00:00")
    return RestockResult(data.sku, data.quantity, level)


@activity.defn(name="inventory.set_stock")
async def set_stock(data: SetStockInput) -> SetStockResult:
    calls.append(data)
    return SetStockResult(created=len(data.levels) - 1, updated=0, unchanged=1)


HISTORIES = Path(__file__).resolve().parent.parent / "histories"


async def run(env: WorkflowEnvironment, workflow: Any, arg: Any, history: str = "") -> Any:
    """Run one workflow; AGORA_RECORD_HISTORIES=1 keeps a named run's history for the
    replay test (test_order_replay.py)."""
    queue = f"test-{uuid.uuid4()}"
    workflow_id = f"wf-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[
            ReservationSweepWorkflow,
            ReservationTimeoutWorkflow,
            RestockWorkflow,
            SeedStockWorkflow,
        ],
        workflow_runner=workflow_runner(),
        activities=[release, expire_due, restock, set_stock],
    ):
        result = await env.client.execute_workflow(
            workflow,
            args=[] if arg is None else [arg],  # the sweep takes none
            id=workflow_id,
            task_queue=queue,
        )
    if history and os.environ.get("AGORA_RECORD_HISTORIES"):
        recorded = await env.client.get_workflow_handle(workflow_id).fetch_history()
        (HISTORIES / f"inventory-{history}.json").write_text(recorded.to_json())
    return result


async def test_a_sweep_expires_what_is_due_at_its_own_start_batch_after_batch(
    env: WorkflowEnvironment,
) -> None:
    calls.clear()
    limit = ExpireDueInput("").limit
    due_batches[:] = [limit, limit, 7]  # two full batches, then the rest
    started = await env.get_current_time()
    expired = await run(env, ReservationSweepWorkflow.run, None, history="sweep")
    assert expired == 2 * limit + 7
    assert len(calls) == 3
    # Every batch uses the one cut-off taken when the sweep started (its workflow time).
    cutoffs = {datetime.fromisoformat(call.as_of) for call in calls}
    assert len(cutoffs) == 1
    assert abs(cutoffs.pop() - started) < timedelta(seconds=5)
    # Each batch starts after the last reservation the one before looked at, so a
    # batch of holds the database refuses is not read again by every later batch.
    assert [(call.after_expires_at, call.after_id) for call in calls] == [
        ("", ""),
        ("2030-01-01T00:00:00+00:00", "batch-1"),
        ("2030-01-01T00:00:00+00:00", "batch-2"),
    ]


async def test_a_sweep_stops_after_its_batch_budget_and_leaves_the_rest_to_the_next(
    env: WorkflowEnvironment,
) -> None:
    calls.clear()
    limit = ExpireDueInput("").limit
    due_batches[:] = [limit] * (SWEEP_BATCHES + 3)
    expired = await run(env, ReservationSweepWorkflow.run, None)
    assert (expired, len(calls)) == (SWEEP_BATCHES * limit, SWEEP_BATCHES)
    due_batches.clear()


async def test_the_reservation_timer_releases_as_expired_once_the_ttl_has_passed(
    env: WorkflowEnvironment,
) -> None:
    calls.clear()
    now = await env.get_current_time()
    expires_at = now + timedelta(minutes=15)
    result = await run(
        env,
        ReservationTimeoutWorkflow.run,
        ReservationTimeoutInput("r-1", expires_at.isoformat()),
        history="reservation-timeout",
    )
    assert result.released
    [(data, released_at)] = calls
    assert data == ReleaseInput("r-1", reason="expired")
    assert released_at >= expires_at


async def test_a_reservation_already_past_its_expiry_is_released_at_once(
    env: WorkflowEnvironment,
) -> None:
    calls.clear()
    past = datetime(2020, 1, 1, tzinfo=UTC).isoformat()
    await run(env, ReservationTimeoutWorkflow.run, ReservationTimeoutInput("r-2", past))
    assert [data for data, _ in calls] == [ReleaseInput("r-2", reason="expired")]


async def test_restock_returns_the_level_and_surfaces_rejections_by_type(
    env: WorkflowEnvironment,
) -> None:
    result = await run(env, RestockWorkflow.run, RestockInput("k", "SKU-1", 5), "restock")
    assert result.stock_after.on_hand == 5
    with pytest.raises(WorkflowFailureError) as raised:
        await run(env, RestockWorkflow.run, RestockInput("k2", "SKU-1", 500))
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidQuantity"


async def test_seeding_splits_levels_into_keyed_batches_and_totals_them(
    env: WorkflowEnvironment,
) -> None:
    calls.clear()
    levels = [StockLine(f"SKU-{i}", i) for i in range(2500)]
    progress = await run(env, SeedStockWorkflow.run, SeedStockInput("seed-1", levels), "seed")
    assert [(c.key, len(c.levels)) for c in calls] == [
        ("seed-1:0", 1000),
        ("seed-1:1", 1000),
        ("seed-1:2", 500),
    ]
    assert [line for c in calls for line in c.levels] == levels
    assert (progress.batches_done, progress.batches_total) == (3, 3)
    assert (progress.created, progress.unchanged) == (2497, 3)
