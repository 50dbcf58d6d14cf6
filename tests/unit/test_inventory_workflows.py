"""Inventory's workflows in the time-skipping environment, with stand-in activities."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.inventory import (
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
from workflows.inventory import (
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


async def run(env: WorkflowEnvironment, workflow: Any, arg: Any) -> Any:
    queue = f"test-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[ReservationTimeoutWorkflow, RestockWorkflow, SeedStockWorkflow],
        activities=[release, restock, set_stock],
    ):
        return await env.client.execute_workflow(
            workflow, arg, id=f"wf-{uuid.uuid4()}", task_queue=queue
        )


async def test_the_reservation_timer_releases_as_expired_once_the_ttl_has_passed(
    env: WorkflowEnvironment,
) -> None:
    calls.clear()
    now = await env.get_current_time()
    expires_at = now + timedelta(minutes=15)
    result = await run(
        env, ReservationTimeoutWorkflow.run, ReservationTimeoutInput("r-1", expires_at.isoformat())
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
    result = await run(env, RestockWorkflow.run, RestockInput("k", "SKU-1", 5))
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
    progress = await run(env, SeedStockWorkflow.run, SeedStockInput("seed-1", levels))
    assert [(c.key, len(c.levels)) for c in calls] == [
        ("seed-1:0", 1000),
        ("seed-1:1", 1000),
        ("seed-1:2", 500),
    ]
    assert [line for c in calls for line in c.levels] == levels
    assert (progress.batches_done, progress.batches_total) == (3, 3)
    assert (progress.created, progress.unchanged) == (2497, 3)
