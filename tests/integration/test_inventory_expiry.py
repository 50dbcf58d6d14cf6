"""Reservation expiry: the `ReservationSweep` workflow gives the stock of lapsed holds back.

Twice: the sweep's activity run directly on the real database, against holds this
test moved into the past and with a cut-off there, so it expires no other test's
hold; and on the real stack, where the inventory service's Temporal Schedule runs
the sweep and a short TTL expires by itself. The workflow's own cut-off and
batching are tested in the time-skipping server by tests/unit/test_inventory_workflows.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from temporalio.client import Client

from activities.inventory import (
    CommitInput,
    ExpireDueInput,
    ExpireDueResult,
    InventoryActivities,
    ReleaseInput,
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
from workflows.inventory import RESERVATION_SWEEP_SCHEDULE_ID

HOUR = 3600
# Where this test moves its holds' expiry: long before any other test's hold, so a
# sweep with a cut-off here can expire nothing but them.
LONG_AGO = datetime(2001, 1, 1, tzinfo=UTC)


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


async def sweep(inventory: InventoryActivities, as_of: datetime) -> ExpireDueResult:
    """One batch of the sweep, with the cut-off `as_of`."""
    return await inventory.expire_due(ExpireDueInput(as_of.isoformat()))


async def reserve(inventory: InventoryActivities, sku: str, quantity: int) -> ReserveResult:
    return await inventory.reserve(ReserveInput(uuid.uuid4().hex, [StockLine(sku, quantity)], HOUR))


async def expiring_long_ago(pool: asyncpg.Pool, reservation_id: str) -> None:
    """Move the hold's expiry to LONG_AGO, as if its TTL had run out then."""
    await pool.execute(
        "UPDATE reservations SET expires_at = $2 WHERE reservation_id = $1",
        reservation_id,
        LONG_AGO,
    )


async def expired_events(pool: asyncpg.Pool, reservation_id: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = $2",
            reservation_id,
            "inventory.ReservationExpired",
        )
    )


async def test_an_unsettled_reservation_expires_after_its_ttl_and_its_stock_returns(
    pool: asyncpg.Pool,
) -> None:
    inventory = InventoryActivities(pool)
    sku = await stocked(pool, 5)
    reservation = await reserve(inventory, sku, 4)

    # Not due within its TTL: the hold stays. (The cut-off is the one the stack's
    # scheduled sweep uses: it expires nothing that sweep would not.)
    await sweep(inventory, datetime.now(UTC))
    assert await available(pool, sku) == 1
    assert (await reservation_row(pool, reservation.reservation_id))["status"] == "held"

    # Due once its TTL has run out. The scheduled sweep may expire it first: either way, once.
    await expiring_long_ago(pool, reservation.reservation_id)
    await sweep(inventory, LONG_AGO)
    assert await available(pool, sku) == 5
    row = await reservation_row(pool, reservation.reservation_id)
    assert (row["status"], row["release_reason"]) == ("expired", "expired")
    expired = await last_event(pool, reservation.reservation_id)
    assert expired.event_type == "inventory.ReservationExpired"

    again = await sweep(inventory, LONG_AGO)  # a second sweep finds nothing more to give back
    assert again.expired == 0
    assert await available(pool, sku) == 5
    assert (await last_event(pool, reservation.reservation_id)).event_id == expired.event_id
    assert await expired_events(pool, reservation.reservation_id) == 1


async def test_a_reservation_committed_before_its_ttl_is_left_alone_by_the_sweep(
    pool: asyncpg.Pool,
) -> None:
    inventory = InventoryActivities(pool)
    sku = await stocked(pool, 5)
    reservation = await reserve(inventory, sku, 2)
    await inventory.commit(CommitInput(reservation.reservation_id))
    await expiring_long_ago(pool, reservation.reservation_id)
    await sweep(inventory, LONG_AGO)
    assert (await reservation_row(pool, reservation.reservation_id))["status"] == "committed"
    assert await pool.fetchrow("SELECT on_hand, reserved FROM stock WHERE sku = $1", sku) == (3, 0)
    assert await expired_events(pool, reservation.reservation_id) == 0


async def test_a_hold_whose_release_is_refused_for_good_does_not_stop_the_sweep(
    pool: asyncpg.Pool,
) -> None:
    # An operator "corrected" a sku's reserved count under a hold: giving the hold
    # back would take reserved below zero, which the stock row's CHECK refuses on
    # every attempt. The holds due after it still expire.
    inventory = InventoryActivities(pool)
    stuck_sku, sku = await stocked(pool, 5), await stocked(pool, 5)
    stuck, due = await reserve(inventory, stuck_sku, 2), await reserve(inventory, sku, 3)
    await pool.execute("UPDATE stock SET reserved = 0 WHERE sku = $1", stuck_sku)
    await expiring_long_ago(pool, stuck.reservation_id)  # the older: first in the batch
    await pool.execute(
        "UPDATE reservations SET expires_at = $2 WHERE reservation_id = $1",
        due.reservation_id,
        LONG_AGO + timedelta(seconds=1),
    )
    try:
        # A full batch of nothing but refused holds: the next batch starts after it
        # (it used to read the same batch again, and with 200 such holds the sweep
        # never got past them).
        cut_off = (LONG_AGO + timedelta(seconds=1)).isoformat()
        only_stuck = await inventory.expire_due(ExpireDueInput(cut_off, limit=1))
        assert (only_stuck.failed, only_stuck.expired, only_stuck.more) == (1, 0, True)
        assert only_stuck.last_id == stuck.reservation_id
        after = ExpireDueInput(
            cut_off,
            limit=1,
            after_expires_at=only_stuck.last_expires_at,
            after_id=only_stuck.last_id,
        )
        next_batch = await inventory.expire_due(after)
        assert next_batch.failed == 0, "the refused hold was read again"
        # Expired by that batch or, racing it, by the stack's scheduled sweep.
        assert (await reservation_row(pool, due.reservation_id))["status"] == "expired"
        result = await sweep(inventory, LONG_AGO + timedelta(seconds=1))
        assert result.failed == 1
        assert (await reservation_row(pool, stuck.reservation_id))["status"] == "held"
        assert await available(pool, sku) == 5
        assert await expired_events(pool, due.reservation_id) == 1
    finally:
        # Put the count back, so no later sweep of the stack meets this hold.
        await pool.execute("UPDATE stock SET reserved = 2 WHERE sku = $1", stuck_sku)
    again = await sweep(inventory, LONG_AGO + timedelta(seconds=1))
    assert again.failed == 0
    assert (await reservation_row(pool, stuck.reservation_id))["status"] == "expired"
    assert await available(pool, stuck_sku) == 5


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


async def test_the_sweep_prunes_reservations_settled_past_the_retention_only(
    pool: asyncpg.Pool,
) -> None:
    # Every order left its reservation and lines for good.
    sku = await stocked(pool, 10)
    inventory = InventoryActivities(pool)
    old, recent, held = [await reserve(inventory, sku, 1) for _ in range(3)]
    for settled in (old, recent):
        await inventory.release(ReleaseInput(settled.reservation_id, "order_cancelled"))
    await pool.execute(
        "UPDATE reservations SET settled_at = now() - make_interval(days => $2),"
        " created_at = now() - make_interval(days => $2) WHERE reservation_id = $1",
        old.reservation_id,
        idempotency.RETENTION_DAYS + 1,
    )
    await pool.execute(  # held, however old: never pruned
        "UPDATE reservations SET created_at = now() - make_interval(days => $2)"
        " WHERE reservation_id = $1",
        held.reservation_id,
        idempotency.RETENTION_DAYS + 1,
    )
    await inventory.expire_due(ExpireDueInput(datetime.now(UTC).isoformat()))
    ids = [old.reservation_id, recent.reservation_id, held.reservation_id]
    left = await pool.fetch(
        "SELECT reservation_id FROM reservations WHERE reservation_id = ANY($1::text[])", ids
    )
    assert sorted(r["reservation_id"] for r in left) == sorted(ids[1:])
    lines = await pool.fetchval(
        "SELECT count(*) FROM reservation_lines WHERE reservation_id = $1", old.reservation_id
    )
    assert lines == 0
    assert await available(pool, sku) == 9  # only the held one holds stock
    # Its event sequence went with it (a row per reservation, kept for ever before).
    sequences = await pool.fetch(
        "SELECT aggregate_id FROM outbox_sequence"
        " WHERE aggregate_type = 'reservation' AND aggregate_id = ANY($1::text[])",
        ids,
    )
    assert sorted(r["aggregate_id"] for r in sequences) == sorted(ids[1:])


async def test_a_reservation_that_waited_for_its_row_gets_its_whole_ttl(pool: asyncpg.Pool) -> None:
    # A reserve that waited on a hot stock row (another order holding it) counts its
    # TTL from when it held the stock, not from when its transaction began: an
    # expiry up to that wait early let the sweep take the stock of a saga still paying.
    inventory = InventoryActivities(pool)
    sku = await stocked(pool, 5)
    ttl = 5
    async with pool.acquire() as hot:
        busy = hot.transaction()
        await busy.start()
        await hot.execute("SELECT 1 FROM stock WHERE sku = $1 FOR UPDATE", sku)
        reserving = asyncio.create_task(
            inventory.reserve(ReserveInput(uuid.uuid4().hex, [StockLine(sku, 1)], ttl))
        )

        async def waiting() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE stock SET reserved%'"
                )
            )

        await eventually(waiting, within=30, what="the reserve to wait for the row")
        await asyncio.sleep(2)
        released_at = await hot.fetchval("SELECT clock_timestamp()")
        await busy.commit()
    held = await reserving
    # It held the stock once the row was released: its TTL counts from then at the
    # earliest (counted from its transaction's start, it would be 2 s short).
    assert datetime.fromisoformat(held.expires_at) >= released_at + timedelta(seconds=ttl)
