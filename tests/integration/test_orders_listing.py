"""The orders service's list answers each order from one snapshot, as GetOrder does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from temporalio.testing import ActivityEnvironment

from activities.orders import OrdersActivities, RecordRefundInput
from agora import db
from agora.config import Settings
from contracts.agora.common.v1 import PageRequest
from contracts.agora.orders.v1 import GetOrderRequest, ListOrdersRequest, Order, OrderStatus
from tests.integration.conftest import Services
from workers.orders import api
from workers.orders.api import OrdersApi

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def pool(settings: Settings, services: Services) -> AsyncIterator[asyncpg.Pool]:
    services("orders")  # its database migrated
    connections = await db.create_pool(settings, "orders", size=2)
    yield connections
    await connections.close()


async def a_completed_order(pool: asyncpg.Pool, customer: str) -> uuid.UUID:
    order_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO orders (order_id, customer_id, idempotency_key, status, currency,
                                   total_minor, workflow_id)
               VALUES ($1, $2, $3, 'COMPLETED', 'EUR', 1000, $4)""",
            order_id,
            customer,
            uuid.uuid4().hex,
            f"order-{order_id}",
        )
        await conn.execute(
            "INSERT INTO order_status_history (order_id, transition_key, status)"
            " VALUES ($1, 'completed', 'COMPLETED')",
            order_id,
        )
    return order_id


async def refunded(pool: asyncpg.Pool, order_id: uuid.UUID) -> None:
    """A whole refund, as record_refund commits it: status, amount and history at once."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE orders SET status = 'REFUNDED', refunded_minor = 1000 WHERE order_id = $1",
            order_id,
        )
        await conn.execute(
            "INSERT INTO order_status_history (order_id, transition_key, status)"
            " VALUES ($1, 'refund:1', 'REFUNDED')",
            order_id,
        )


async def test_a_refund_committed_while_the_list_is_read_is_not_half_in_it(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = f"cust-{uuid.uuid4()}"
    order_id = await a_completed_order(pool, customer)
    read_orders = api._orders

    async def refund_lands_between_the_reads(
        conn: asyncpg.Connection, rows: list[asyncpg.Record]
    ) -> list[Order]:
        await refunded(pool, order_id)  # after the order's row was read, before its history
        return await read_orders(conn, rows)

    monkeypatch.setattr(api, "_orders", refund_lands_between_the_reads)
    listed = await OrdersApi(pool).list_orders(ListOrdersRequest(customer_id=customer))

    [order] = listed.orders
    assert order.status_history[-1].status == order.status == OrderStatus.COMPLETED


async def test_a_partial_refund_recorded_after_the_cancel_leaves_the_order_cancelled(
    pool: asyncpg.Pool,
) -> None:
    # The customer's partial refund reached payments before the cancel's refund of the
    # rest, and its record came after the cancel's: the order stays CANCELLED.
    order_id = await a_completed_order(pool, f"cust-{uuid.uuid4()}")
    orders = OrdersActivities(pool, None)  # type: ignore[arg-type]  # (no pricing here)
    record = ActivityEnvironment().run
    cancel = RecordRefundInput(str(order_id), "cancel", "r-2", 700, cancel=True)
    partial = RecordRefundInput(str(order_id), "partial-1", "r-1", 300)
    await record(orders.record_refund, cancel)
    after = await record(orders.record_refund, partial)

    assert (after.status, after.refunded_minor) == ("CANCELLED", 1000)
    history = await pool.fetch(
        "SELECT status FROM order_status_history WHERE order_id = $1 ORDER BY changed_at",
        order_id,
    )
    assert [r["status"] for r in history] == ["COMPLETED", "CANCELLED", "CANCELLED"]


async def test_the_snapshot_of_a_cancelled_order_gives_its_cancel_s_time(
    pool: asyncpg.Pool,
) -> None:
    # A partial refund recorded after the cancel, under a key that sorts before
    # `cancel`: the cancel's time is still the one the snapshot gives (a repeated
    # restock is allowed only within 7 days of it).
    order_id = await a_completed_order(pool, f"cust-{uuid.uuid4()}")
    orders = OrdersActivities(pool, None)  # type: ignore[arg-type]  # (no pricing here)
    run = ActivityEnvironment().run
    await run(
        orders.record_refund, RecordRefundInput(str(order_id), "cancel", "r-2", 700, cancel=True)
    )
    await run(orders.record_refund, RecordRefundInput(str(order_id), "0-partial", "r-1", 300))
    # Where a row lands in the table is free space's business, not time's (and which
    # row a query without an order meets first is the plan's): the cancel's row, a
    # day older, moved behind the partial refund's.
    await pool.execute(
        "WITH gone AS (DELETE FROM order_status_history"
        " WHERE order_id = $1 AND transition_key = 'refund:cancel' RETURNING *)"
        " INSERT INTO order_status_history SELECT * FROM gone",
        order_id,
    )
    await pool.execute(
        "UPDATE order_status_history SET changed_at = now() - interval '1 day'"
        " WHERE order_id = $1 AND transition_key = 'refund:cancel'",
        order_id,
    )
    cancelled_at = await pool.fetchval(
        "SELECT changed_at FROM order_status_history"
        " WHERE order_id = $1 AND transition_key = 'refund:cancel'",
        order_id,
    )
    snapshot = await run(orders.snapshot, str(order_id))
    assert snapshot.cancel_recorded_at == cancelled_at.isoformat()


async def test_a_status_filtered_list_pages_through_that_status_only(pool: asyncpg.Pool) -> None:
    customer = f"cust-{uuid.uuid4()}"
    completed = [await a_completed_order(pool, customer) for _ in range(3)]
    await refunded(pool, await a_completed_order(pool, customer))
    orders = OrdersApi(pool)
    pages: list[list[str]] = []
    cursor = ""
    while True:
        answer = await orders.list_orders(
            ListOrdersRequest(
                customer_id=customer,
                status=OrderStatus.COMPLETED,
                page=PageRequest(page_size=1, cursor=cursor),
            )
        )
        pages.append([o.order_id for o in answer.orders])
        cursor = answer.page.next_cursor if answer.page else ""
        if not cursor:
            break
        assert len(pages) < 5, pages
    newest_first = await pool.fetch(
        "SELECT order_id FROM orders WHERE order_id = ANY($1::uuid[])"
        " ORDER BY created_at DESC, order_id DESC",
        completed,
    )
    assert pages == [[str(r["order_id"])] for r in newest_first]
    refunds = await orders.list_orders(
        ListOrdersRequest(customer_id=customer, status=OrderStatus.REFUNDED)
    )
    assert [o.status for o in refunds.orders] == [OrderStatus.REFUNDED]


async def test_a_cancel_after_completion_gives_the_order_its_reason(pool: asyncpg.Pool) -> None:
    # The order's reason is its last status change's: a cancel or a refund recorded
    # after completion left the completion's (none) on GET and in the list.
    customer = f"cust-{uuid.uuid4()}"
    order_id = await a_completed_order(pool, customer)
    orders = OrdersActivities(pool, None)  # type: ignore[arg-type]  # (no pricing here)
    cancel = RecordRefundInput(str(order_id), "cancel", "r-1", 1000, "changed my mind", True)
    await ActivityEnvironment().run(orders.record_refund, cancel)
    api_ = OrdersApi(pool)
    got = (await api_.get_order(GetOrderRequest(order_id=str(order_id)))).order
    assert got is not None
    assert (got.status, got.reason) == (OrderStatus.CANCELLED, "changed my mind")
    assert got.status_history[-1].reason == got.reason
    listed = await api_.list_orders(ListOrdersRequest(customer_id=customer))
    assert [o.reason for o in listed.orders] == ["changed my mind"]
