"""Inventory against the real stack: its activities on the real PostgreSQL, its gRPC read
API in a real service process, its events through the outbox to Kafka.

The activities are called in-process on a pool of inventory's own database (the
service process applied the migrations), so each test can look at the rows and
the outbox it produced. Every test uses fresh skus.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from temporalio.exceptions import ApplicationError

from activities.inventory import (
    AdjustStockInput,
    CommitInput,
    InventoryActivities,
    ReleaseInput,
    ReserveInput,
    RestockInput,
    SetStockInput,
    StockLine,
)
from agora import db
from agora.config import Settings
from agora.grpc import Channels
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.inventory.v1 import (
    BatchGetStockRequest,
    GetStockRequest,
    InventoryServiceStub,
    ReservationReleased,
    StockReserved,
)
from tests.integration.conftest import ServiceProcess, Services


@pytest.fixture(scope="module")
def inventory_service(services: Services) -> ServiceProcess:
    return services("inventory")


@pytest.fixture(scope="module")
async def pool(
    settings: Settings, inventory_service: ServiceProcess
) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(settings, "inventory", size=10)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
def inventory(pool: asyncpg.Pool) -> InventoryActivities:
    # These tests settle reservations by hand; expiry has its own module (TTLs here are
    # long enough that the sweep never reaches them).
    return InventoryActivities(pool)


@pytest.fixture(scope="module")
async def stub(
    settings: Settings, inventory_service: ServiceProcess
) -> AsyncIterator[InventoryServiceStub]:
    channels = Channels(settings, caller="gateway")
    yield InventoryServiceStub(channels.get("inventory"))
    channels.close()


def new_sku() -> str:
    return f"TEST-{uuid.uuid4().hex[:12].upper()}"


def key() -> str:
    return uuid.uuid4().hex


async def stocked(inventory: InventoryActivities, quantity: int) -> str:
    sku = new_sku()
    await inventory.set_stock(SetStockInput(key(), [StockLine(sku, quantity)]))
    return sku


async def level(pool: asyncpg.Pool, sku: str) -> dict[str, int]:
    row = await pool.fetchrow("SELECT on_hand, reserved FROM stock WHERE sku = $1", sku)
    assert row is not None
    return {"on_hand": row["on_hand"], "reserved": row["reserved"]}


async def rejected(call: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        await call
    assert raised.value.non_retryable
    return raised.value


async def events(pool: asyncpg.Pool, aggregate_id: str) -> list[EventEnvelope]:
    rows = await pool.fetch(
        "SELECT envelope FROM outbox WHERE aggregate_id = $1 ORDER BY sequence", aggregate_id
    )
    return [EventEnvelope.parse(bytes(row["envelope"])) for row in rows]


# Reserve ---------------------------------------------------------------------------


async def test_reserving_holds_stock_and_reports_availability(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku = await stocked(inventory, 5)
    reservation = await inventory.reserve(ReserveInput(key(), [StockLine(sku, 2)], 600))
    assert reservation.status == "held"
    assert [(s.sku, s.on_hand, s.reserved, s.available) for s in reservation.stock_after] == [
        (sku, 5, 2, 3)
    ]
    assert await level(pool, sku) == {"on_hand": 5, "reserved": 2}


async def test_a_reservation_holds_every_line_or_none(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    plenty, scarce = await stocked(inventory, 10), await stocked(inventory, 1)
    error = await rejected(
        inventory.reserve(ReserveInput(key(), [StockLine(plenty, 3), StockLine(scarce, 2)], 600))
    )
    assert error.type == "OutOfStock"
    assert scarce in error.message and "requested 2, available 1" in error.message
    assert error.details == ({"sku": scarce, "requested": 2, "available": 1},)
    assert await level(pool, plenty) == {"on_hand": 10, "reserved": 0}
    assert await level(pool, scarce) == {"on_hand": 1, "reserved": 0}


async def test_a_refused_reservation_locks_no_line_after_the_refusal(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    # The lines after a refused one were still updated, their rows locked until the
    # rejection's savepoint ended: each waited for any reserve holding them, and
    # made every other reserve of them wait.
    tag = uuid.uuid4().hex[:10].upper()
    scarce, busy, empty = f"TEST-A{tag}", f"TEST-B{tag}", f"TEST-C{tag}"  # reserved in this order
    for sku, quantity in ((scarce, 1), (busy, 10), (empty, 0)):
        await inventory.set_stock(SetStockInput(key(), [StockLine(sku, quantity)]))
    lines = [StockLine(scarce, 2), StockLine(busy, 1), StockLine(empty, 1)]
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM stock WHERE sku = $1 FOR UPDATE", busy)
        error = await rejected(
            asyncio.wait_for(inventory.reserve(ReserveInput(key(), lines, 600)), timeout=10)
        )
    assert error.type == "OutOfStock"
    assert error.details == (
        {"sku": scarce, "requested": 2, "available": 1},
        {"sku": empty, "requested": 1, "available": 0},
    )
    assert await level(pool, busy) == {"on_hand": 10, "reserved": 0}


async def test_two_lines_of_one_sku_are_reserved_as_their_sum(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku = await stocked(inventory, 3)
    error = await rejected(
        inventory.reserve(ReserveInput(key(), [StockLine(sku, 2), StockLine(sku, 2)], 600))
    )
    assert error.type == "OutOfStock"
    held = await inventory.reserve(ReserveInput(key(), [StockLine(sku, 1), StockLine(sku, 2)], 60))
    assert held.lines == [StockLine(sku, 3)]
    assert await level(pool, sku) == {"on_hand": 3, "reserved": 3}


async def test_reserving_an_unknown_sku_is_rejected_as_unknown(
    inventory: InventoryActivities,
) -> None:
    error = await rejected(inventory.reserve(ReserveInput(key(), [StockLine(new_sku(), 1)], 60)))
    assert error.type == "UnknownSku"


@pytest.mark.parametrize(
    ("lines", "ttl"),
    [
        ([], 60),
        ([StockLine("A-1", 0)], 60),
        ([StockLine("A-1", -3)], 60),
        ([StockLine("bad sku", 1)], 60),
        ([StockLine("A-1", 1)], 0),
    ],
)
async def test_malformed_reservations_are_rejected_without_retry(
    inventory: InventoryActivities, lines: list[StockLine], ttl: int
) -> None:
    error = await rejected(inventory.reserve(ReserveInput(key(), lines, ttl)))
    assert error.type in {"InvalidArgument", "InvalidQuantity"}


async def test_a_retried_reserve_returns_the_first_result_and_holds_once(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku = await stocked(inventory, 5)
    data = ReserveInput(key(), [StockLine(sku, 2)], 600, order_id="order-1")
    first = await inventory.reserve(data)
    again = await asyncio.gather(*(inventory.reserve(data) for _ in range(5)))
    assert all(result == first for result in again)
    assert await level(pool, sku) == {"on_hand": 5, "reserved": 2}
    assert [e.event_type for e in await events(pool, data.reservation_id)] == [
        "inventory.StockReserved"
    ]


async def test_a_retried_rejection_stays_rejected_even_after_a_restock(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku = await stocked(inventory, 1)
    data = ReserveInput(key(), [StockLine(sku, 2)], 600)
    assert (await rejected(inventory.reserve(data))).type == "OutOfStock"
    await inventory.restock(RestockInput(key(), sku, 5))
    # The first answer stands: the saga that got it has already moved on.
    assert (await rejected(inventory.reserve(data))).type == "OutOfStock"
    assert await level(pool, sku) == {"on_hand": 6, "reserved": 0}


async def test_one_reservation_id_for_a_different_request_is_refused(
    inventory: InventoryActivities,
) -> None:
    sku = await stocked(inventory, 5)
    reservation_id = key()
    await inventory.reserve(ReserveInput(reservation_id, [StockLine(sku, 1)], 600))
    error = await rejected(
        inventory.reserve(ReserveInput(reservation_id, [StockLine(sku, 2)], 600))
    )
    assert error.type == "IdempotencyKeyReused"


async def test_two_hundred_concurrent_reservations_for_ten_units_never_oversell(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku = await stocked(inventory, 10)

    async def attempt() -> str:
        try:
            await inventory.reserve(ReserveInput(key(), [StockLine(sku, 1)], 600))
        except ApplicationError as error:
            assert error.non_retryable and "out of stock" in error.message, error
            return error.type or ""
        return "held"

    outcomes = await asyncio.gather(*(attempt() for _ in range(200)))
    assert outcomes.count("held") == 10
    assert outcomes.count("OutOfStock") == 190
    assert await level(pool, sku) == {"on_hand": 10, "reserved": 10}
    held = await pool.fetchval(
        "SELECT sum(quantity) FROM reservation_lines l JOIN reservations r USING (reservation_id)"
        " WHERE l.sku = $1 AND r.status = 'held'",
        sku,
    )
    assert held == 10


# Release and commit ------------------------------------------------------------------


async def test_releasing_gives_the_stock_back_once(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku = await stocked(inventory, 4)
    reservation = await inventory.reserve(ReserveInput(key(), [StockLine(sku, 3)], 600, "o-9"))
    first = await inventory.release(ReleaseInput(reservation.reservation_id, "compensation"))
    assert first.released and first.status == "released"
    assert [(s.reserved, s.available) for s in first.stock_after] == [(0, 4)]
    # A retry gets the first answer; another caller (a cancel) finds it already released.
    assert (
        await inventory.release(ReleaseInput(reservation.reservation_id, "compensation")) == first
    )
    cancel = await inventory.release(ReleaseInput(reservation.reservation_id, "order_cancelled"))
    assert not cancel.released and cancel.status == "released"
    assert await level(pool, sku) == {"on_hand": 4, "reserved": 0}
    published = await events(pool, reservation.reservation_id)
    assert [e.event_type for e in published] == [
        "inventory.StockReserved",
        "inventory.ReservationReleased",
    ]
    released = ReservationReleased.parse(published[1].payload)
    assert released.order_id == "o-9" and released.stock_after[0].available == 4


async def test_a_release_that_overtakes_its_reserve_leaves_nothing_held(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku = await stocked(inventory, 4)
    reservation_id = key()
    early = await inventory.release(ReleaseInput(reservation_id, "compensation"))
    assert not early.released
    late = await inventory.reserve(ReserveInput(reservation_id, [StockLine(sku, 1)], 600))
    assert late.status == "released" and late.lines == []
    assert await level(pool, sku) == {"on_hand": 4, "reserved": 0}


async def test_committing_deducts_on_hand_exactly_once(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku = await stocked(inventory, 5)
    reservation = await inventory.reserve(ReserveInput(key(), [StockLine(sku, 2)], 600))
    results = await asyncio.gather(
        *(inventory.commit(CommitInput(reservation.reservation_id)) for _ in range(3))
    )
    assert all(r.committed and r.status == "committed" for r in results)
    assert await level(pool, sku) == {"on_hand": 3, "reserved": 0}
    # Settled: a late release changes nothing.
    late = await inventory.release(ReleaseInput(reservation.reservation_id, "compensation"))
    assert not late.released and late.status == "committed"
    assert await level(pool, sku) == {"on_hand": 3, "reserved": 0}


async def test_committing_a_released_or_unknown_reservation_is_refused(
    inventory: InventoryActivities,
) -> None:
    sku = await stocked(inventory, 5)
    reservation = await inventory.reserve(ReserveInput(key(), [StockLine(sku, 2)], 600))
    await inventory.release(ReleaseInput(reservation.reservation_id, "compensation"))
    error = await rejected(inventory.commit(CommitInput(reservation.reservation_id)))
    assert error.type == "ReservationNotHeld"
    assert (await rejected(inventory.commit(CommitInput(key())))).type == "ReservationNotFound"


# Restock, set, adjust ------------------------------------------------------------------


async def test_restock_is_idempotent_by_key_and_creates_a_new_sku(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku, restock_key = new_sku(), key()
    first = await inventory.restock(RestockInput(restock_key, sku, 7))
    assert await inventory.restock(RestockInput(restock_key, sku, 7)) == first
    assert first.stock_after.on_hand == 7
    await inventory.restock(RestockInput(key(), sku, 3))
    assert await level(pool, sku) == {"on_hand": 10, "reserved": 0}
    reused = await rejected(inventory.restock(RestockInput(restock_key, sku, 8)))
    assert reused.type == "IdempotencyKeyReused"
    assert [e.event_type for e in await events(pool, sku)] == [
        "inventory.StockRestocked",
        "inventory.StockRestocked",
    ]


async def test_seeding_creates_missing_skus_only_and_overwrite_sets_them(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    skus = [new_sku() for _ in range(300)]
    first = await inventory.set_stock(SetStockInput(key(), [StockLine(s, 20) for s in skus]))
    assert (first.created, first.updated, first.unchanged) == (300, 0, 0)
    # A second seed run (new key, other quantities) leaves existing stock alone.
    again = await inventory.set_stock(SetStockInput(key(), [StockLine(s, 99) for s in skus]))
    assert (again.created, again.updated, again.unchanged) == (0, 0, 300)
    assert await level(pool, skus[0]) == {"on_hand": 20, "reserved": 0}

    await inventory.reserve(ReserveInput(key(), [StockLine(skus[0], 5)], 600))
    below = await rejected(
        inventory.set_stock(SetStockInput(key(), [StockLine(skus[0], 4)], overwrite=True))
    )
    assert below.type == "InvalidQuantity"
    counted = await inventory.set_stock(
        SetStockInput(key(), [StockLine(skus[0], 8), StockLine(skus[1], 20)], overwrite=True)
    )
    assert (counted.created, counted.updated, counted.unchanged) == (0, 1, 1)
    assert await level(pool, skus[0]) == {"on_hand": 8, "reserved": 5}
    assert len(await events(pool, skus[0])) == 2  # seeded, then counted


async def test_a_seed_that_changes_no_existing_row_does_not_wait_for_one(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    # Without overwrite a seed leaves existing rows alone, but it locked them for its
    # whole batch: it waited for every reserve of them, and they for it.
    busy, fresh = await stocked(inventory, 20), new_sku()
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM stock WHERE sku = $1 FOR UPDATE", busy)
        seeded = await asyncio.wait_for(
            inventory.set_stock(SetStockInput(key(), [StockLine(busy, 99), StockLine(fresh, 3)])),
            timeout=10,
        )
    assert (seeded.created, seeded.updated, seeded.unchanged) == (1, 0, 1)
    assert await level(pool, busy) == {"on_hand": 20, "reserved": 0}
    assert await level(pool, fresh) == {"on_hand": 3, "reserved": 0}


async def test_adjusting_never_drops_on_hand_below_reserved(
    inventory: InventoryActivities, pool: asyncpg.Pool
) -> None:
    sku = await stocked(inventory, 5)
    await inventory.reserve(ReserveInput(key(), [StockLine(sku, 3)], 600))
    shrink = await inventory.adjust_stock(AdjustStockInput(key(), sku, -2))
    assert shrink.stock_after.on_hand == 3 and shrink.stock_after.available == 0
    error = await rejected(inventory.adjust_stock(AdjustStockInput(key(), sku, -1)))
    assert error.type == "InvalidQuantity"
    unknown = await rejected(inventory.adjust_stock(AdjustStockInput(key(), new_sku(), 1)))
    assert unknown.type == "UnknownSku"
    assert await level(pool, sku) == {"on_hand": 3, "reserved": 3}


# Read API and events ---------------------------------------------------------------------


async def test_get_stock_answers_levels_and_not_found(
    inventory: InventoryActivities, stub: InventoryServiceStub
) -> None:
    sku = await stocked(inventory, 6)
    await inventory.reserve(ReserveInput(key(), [StockLine(sku, 2)], 600))
    reply = await stub.get_stock(GetStockRequest(sku=sku))
    assert reply.stock is not None
    assert (reply.stock.on_hand, reply.stock.reserved, reply.stock.available) == (6, 2, 4)
    for bad, status in ((new_sku(), Status.NOT_FOUND), ("no spaces", Status.INVALID_ARGUMENT)):
        with pytest.raises(GRPCError) as raised:
            await stub.get_stock(GetStockRequest(sku=bad))
        assert raised.value.status == status


async def test_batch_get_stock_splits_found_and_not_found(
    inventory: InventoryActivities, stub: InventoryServiceStub
) -> None:
    first, second, missing = await stocked(inventory, 1), await stocked(inventory, 2), new_sku()
    reply = await stub.batch_get_stock(BatchGetStockRequest(skus=[second, missing, first, second]))
    assert [(s.sku, s.available) for s in reply.stock] == [(second, 2), (first, 1)]
    assert reply.not_found == [missing]


async def test_events_reach_kafka_with_the_stock_after_the_change(
    settings: Settings, inventory: InventoryActivities
) -> None:
    sku = await stocked(inventory, 3)
    reservation = await inventory.reserve(ReserveInput(key(), [StockLine(sku, 1)], 600, "o-1"))
    consumer = AIOKafkaConsumer(
        "inventory.events",
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"test-inventory-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            async for record in consumer:
                envelope = EventEnvelope.parse(record.value)
                if envelope.aggregate_id == reservation.reservation_id:
                    break
    finally:
        await consumer.stop()
    assert envelope.event_type == "inventory.StockReserved"
    reserved = StockReserved.parse(envelope.payload)
    assert reserved.order_id == "o-1" and [i.sku for i in reserved.items] == [sku]
    assert [(s.sku, s.on_hand, s.reserved, s.available) for s in reserved.stock_after] == [
        (sku, 3, 1, 2)
    ]
