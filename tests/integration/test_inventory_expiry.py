"""Reservation expiry: the `ReservationTimeout` workflow's durable timer gives stock back.

Twice: in Temporal's time-skipping environment (an hour-long TTL passes at
once) with the real activities on the real database, and on the real stack
(the inventory service process, the dev Temporal server) with a short TTL.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.inventory import (
    CommitInput,
    InventoryActivities,
    ReleaseResult,
    ReserveInput,
    SetStockInput,
    StockLine,
)
from agora import db
from agora import temporal as platform_temporal
from agora.config import Settings
from tests.integration.conftest import ServiceProcess, Services
from workflows.inventory import (
    TASK_QUEUE,
    ReservationTimeoutWorkflow,
    reservation_timeout_workflow_id,
)

TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"
HOUR = 3600


@pytest.fixture(scope="module")
def inventory_service(services: Services) -> ServiceProcess:
    return services("inventory")


@pytest.fixture(scope="module")
async def pool(
    settings: Settings, inventory_service: ServiceProcess
) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(settings, "inventory", size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER)
    )
    yield environment
    await environment.shutdown()


def new_sku() -> str:
    return f"EXP-{uuid.uuid4().hex[:12].upper()}"


async def stocked(pool: asyncpg.Pool, quantity: int) -> str:
    sku = new_sku()
    await InventoryActivities(pool, None).set_stock(
        SetStockInput(uuid.uuid4().hex, [StockLine(sku, quantity)])
    )
    return sku


async def reservation_row(pool: asyncpg.Pool, reservation_id: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT status, release_reason FROM reservations WHERE reservation_id = $1", reservation_id
    )
    assert row is not None
    return row


async def eventually(read: Callable[[], Awaitable[int]], *, equals: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while True:
        if await read() == equals:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


def timer_of(client: Client, reservation_id: str) -> WorkflowHandle[Any, ReleaseResult]:
    """The reservation's expiry timer (the ReservationTimeout workflow)."""
    return client.get_workflow_handle(
        reservation_timeout_workflow_id(reservation_id), result_type=ReleaseResult
    )


async def available(pool: asyncpg.Pool, sku: str) -> int:
    return int(await pool.fetchval("SELECT on_hand - reserved FROM stock WHERE sku = $1", sku))


async def test_an_unsettled_reservation_expires_after_its_ttl_and_its_stock_returns(
    env: WorkflowEnvironment, pool: asyncpg.Pool
) -> None:
    queue = f"test-{uuid.uuid4()}"
    inventory = InventoryActivities(pool, env.client, task_queue=queue)
    sku = await stocked(pool, 5)
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[ReservationTimeoutWorkflow],
        activities=[inventory.reserve, inventory.release],
    ):
        reservation = await inventory.reserve(
            ReserveInput(uuid.uuid4().hex, [StockLine(sku, 4)], HOUR)
        )
        assert await available(pool, sku) == 1
        timer = timer_of(env.client, reservation.reservation_id)
        await env.sleep(HOUR + 1)  # the hour passes at once in the time-skipping server
        outcome = await timer.result()
    assert outcome.released and outcome.status == "expired"
    assert await available(pool, sku) == 5
    row = await reservation_row(pool, reservation.reservation_id)
    assert (row["status"], row["release_reason"]) == ("expired", "expired")
    assert (
        await pool.fetchval(
            "SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY sequence DESC LIMIT 1",
            reservation.reservation_id,
        )
        == "inventory.ReservationExpired"
    )


async def test_a_reservation_committed_before_its_ttl_is_left_alone_by_the_timer(
    env: WorkflowEnvironment, pool: asyncpg.Pool
) -> None:
    queue = f"test-{uuid.uuid4()}"
    inventory = InventoryActivities(pool, env.client, task_queue=queue)
    sku = await stocked(pool, 5)
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[ReservationTimeoutWorkflow],
        activities=[inventory.reserve, inventory.release],
    ):
        reservation = await inventory.reserve(
            ReserveInput(uuid.uuid4().hex, [StockLine(sku, 2)], HOUR)
        )
        await inventory.commit(CommitInput(reservation.reservation_id))
        timer = timer_of(env.client, reservation.reservation_id)
        await env.sleep(HOUR + 1)
        outcome = await timer.result()
    assert not outcome.released and outcome.status == "committed"
    assert await pool.fetchrow("SELECT on_hand, reserved FROM stock WHERE sku = $1", sku) == (3, 0)


async def test_on_the_real_stack_a_short_ttl_expires_and_the_stock_returns(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    client: Client = await platform_temporal.connect(settings)
    inventory = InventoryActivities(pool, client, task_queue=TASK_QUEUE)
    sku = await stocked(pool, 3)
    data = ReserveInput(uuid.uuid4().hex, [StockLine(sku, 3)], ttl_seconds=2)
    await inventory.reserve(data)
    await inventory.reserve(data)  # a retry finds the timer the first call started
    timer = timer_of(client, data.reservation_id)
    assert (await timer.describe()).status == WorkflowExecutionStatus.RUNNING
    assert await available(pool, sku) == 0

    assert await eventually(lambda: available(pool, sku), equals=3, within=30)
    assert (await reservation_row(pool, data.reservation_id))["status"] == "expired"
    assert (await timer.result()).released
