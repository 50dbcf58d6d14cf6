"""Reservation expiry: the `ReservationSweep` workflow gives the stock of lapsed holds back.

Twice: in Temporal's time-skipping environment (an hour-long TTL passes at
once; the sweep's cut-off is its workflow time) with the real activities on the
real database, and on the real stack, where the inventory service's Temporal
Schedule runs the sweep and a short TTL expires by itself.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.inventory import (
    CommitInput,
    ExpireDueInput,
    InventoryActivities,
    ReserveInput,
    ReserveResult,
    SetStockInput,
    StockLine,
)
from agora import db
from agora import temporal as platform_temporal
from agora.config import Settings
from contracts.agora.events.v1 import EventEnvelope
from tests.integration.conftest import ServiceProcess, Services
from tests.integration.waiting import eventually
from workers.inventory import idempotency
from workflows.inventory import RESERVATION_SWEEP_SCHEDULE_ID, ReservationSweepWorkflow

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


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    # One per test: its clock starts at the real time the database's expiries count from.
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER)
    )
    yield environment
    await environment.shutdown()


def new_sku() -> str:
    return f"EXP-{uuid.uuid4().hex[:12].upper()}"


async def stocked(pool: asyncpg.Pool, quantity: int) -> str:
    sku = new_sku()
    await InventoryActivities(pool).set_stock(
        SetStockInput(uuid.uuid4().hex, [StockLine(sku, quantity)])
    )
    return sku


async def reservation_row(pool: asyncpg.Pool, reservation_id: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT status, release_reason FROM reservations WHERE reservation_id = $1", reservation_id
    )
    assert row is not None
    return row


async def last_event(pool: asyncpg.Pool, reservation_id: str) -> EventEnvelope:
    envelope = await pool.fetchval(
        "SELECT envelope FROM outbox WHERE aggregate_id = $1 ORDER BY sequence DESC LIMIT 1",
        reservation_id,
    )
    return EventEnvelope.parse(envelope)


async def available(pool: asyncpg.Pool, sku: str) -> int:
    return int(await pool.fetchval("SELECT on_hand - reserved FROM stock WHERE sku = $1", sku))


async def sweep(env: WorkflowEnvironment, inventory: InventoryActivities) -> None:
    """One sweep run now, in the environment's time, with the real activity."""
    queue = f"test-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[ReservationSweepWorkflow],
        activities=[inventory.expire_due],
    ):
        await env.client.execute_workflow(
            ReservationSweepWorkflow.run, id=f"sweep-{uuid.uuid4()}", task_queue=queue
        )


async def reserve(inventory: InventoryActivities, sku: str, quantity: int) -> ReserveResult:
    return await inventory.reserve(ReserveInput(uuid.uuid4().hex, [StockLine(sku, quantity)], HOUR))


async def test_an_unsettled_reservation_expires_after_its_ttl_and_its_stock_returns(
    env: WorkflowEnvironment, pool: asyncpg.Pool
) -> None:
    inventory = InventoryActivities(pool)
    sku = await stocked(pool, 5)
    reservation = await reserve(inventory, sku, 4)

    await sweep(env, inventory)  # not due yet: the hold stays
    assert await available(pool, sku) == 1
    assert (await reservation_row(pool, reservation.reservation_id))["status"] == "held"

    await env.sleep(HOUR + 1)  # the hour passes at once in the time-skipping server
    await sweep(env, inventory)
    assert await available(pool, sku) == 5
    row = await reservation_row(pool, reservation.reservation_id)
    assert (row["status"], row["release_reason"]) == ("expired", "expired")
    expired = await last_event(pool, reservation.reservation_id)
    assert expired.event_type == "inventory.ReservationExpired"

    await sweep(env, inventory)  # a second sweep finds nothing more to give back
    assert await available(pool, sku) == 5
    assert (await last_event(pool, reservation.reservation_id)).event_id == expired.event_id


async def test_a_reservation_committed_before_its_ttl_is_left_alone_by_the_sweep(
    env: WorkflowEnvironment, pool: asyncpg.Pool
) -> None:
    inventory = InventoryActivities(pool)
    sku = await stocked(pool, 5)
    reservation = await reserve(inventory, sku, 2)
    await inventory.commit(CommitInput(reservation.reservation_id))
    await env.sleep(HOUR + 1)
    await sweep(env, inventory)
    assert (await reservation_row(pool, reservation.reservation_id))["status"] == "committed"
    assert await pool.fetchrow("SELECT on_hand, reserved FROM stock WHERE sku = $1", sku) == (3, 0)


async def test_on_the_real_stack_the_schedule_expires_a_short_ttl_and_the_stock_returns(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    client: Client = await platform_temporal.connect(settings)
    schedule = await client.get_schedule_handle(RESERVATION_SWEEP_SCHEDULE_ID).describe()
    [interval] = schedule.schedule.spec.intervals
    assert interval.every.total_seconds() == settings.inventory_reservation_sweep_s

    inventory = InventoryActivities(pool)
    sku = await stocked(pool, 3)
    data = ReserveInput(uuid.uuid4().hex, [StockLine(sku, 3)], ttl_seconds=2)
    await inventory.reserve(data)
    assert await available(pool, sku) == 0

    async def returned() -> bool:
        return await available(pool, sku) == 3

    await eventually(returned, within=30, what="the expired reservation's stock back")
    assert (await reservation_row(pool, data.reservation_id))["status"] == "expired"
    # The expiry was the scheduled sweep's doing (its runs are named after the schedule).
    expired = await last_event(pool, data.reservation_id)
    assert expired.event_type == "inventory.ReservationExpired"
    assert expired.workflow_id.startswith(RESERVATION_SWEEP_SCHEDULE_ID)


async def test_the_sweep_prunes_idempotency_records_past_their_retention_only(
    pool: asyncpg.Pool,
) -> None:
    sku = await stocked(pool, 5)
    inventory = InventoryActivities(pool)
    recent = await reserve(inventory, sku, 1)
    old_keys = [f"pruning-{uuid.uuid4().hex}" for _ in range(3)]
    await pool.executemany(
        "INSERT INTO idempotency_keys (operation, key, fingerprint, result, created_at)"
        " VALUES ('reserve', $1, 'x', '{}', now() - make_interval(days => $2))",
        [(key, idempotency.RETENTION_DAYS + 1) for key in old_keys],
    )
    await inventory.expire_due(ExpireDueInput(datetime.now(UTC).isoformat()))
    left = await pool.fetch(
        "SELECT key FROM idempotency_keys WHERE key = ANY($1::text[])",
        [*old_keys, recent.reservation_id],
    )
    assert [row["key"] for row in left] == [recent.reservation_id]
