"""Orders' gRPC read API: one order, or a customer's orders newest first (keyset pages)."""

from __future__ import annotations

import uuid

import asyncpg

from agora.errors import InvalidArgument, NotFound
from agora.keyset import decode as decode_cursor
from agora.keyset import encode as encode_cursor
from agora.text import checked
from contracts.agora.common.v1 import Money, PageInfo
from contracts.agora.orders.v1 import (
    GetOrderRequest,
    GetOrderResponse,
    ListOrdersRequest,
    ListOrdersResponse,
    Order,
    OrderLine,
    OrdersServiceBase,
    OrderStatus,
    StatusChange,
)

MAX_PAGE = 100
DEFAULT_PAGE = 20


class OrdersApi(OrdersServiceBase):
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def get_order(self, message: GetOrderRequest) -> GetOrderResponse:
        try:
            order_id = uuid.UUID(message.order_id)
        except ValueError:
            raise InvalidArgument("order_id must be a UUID") from None
        # One snapshot: a refund committed between the reads would show a status its
        # history does not have yet.
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow("SELECT * FROM orders WHERE order_id = $1", order_id)
            # Another customer's order does not exist, as far as this customer can tell.
            if row is None or (message.customer_id and row["customer_id"] != message.customer_id):
                raise NotFound("no such order")
            return GetOrderResponse(order=await _order(conn, row))

    async def list_orders(self, message: ListOrdersRequest) -> ListOrdersResponse:
        if not message.customer_id:
            raise InvalidArgument("customer_id is required")
        # Checked before the query: a NUL would fail it (UNKNOWN), not find nothing.
        customer_id = checked(message.customer_id, "customer_id")
        page = message.page
        size = page.page_size if page and page.page_size else DEFAULT_PAGE
        if not 0 < size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE}")
        after = decode_cursor(page.cursor) if page and page.cursor else None
        status = message.status.name if message.status else None
        # One snapshot, as get_order's: each order with the history it had when read.
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await conn.fetch(
                """
                SELECT * FROM orders
                WHERE customer_id = $1
                  AND ($2::text IS NULL OR status = $2)
                  AND ($3::timestamptz IS NULL OR (created_at, order_id) < ($3, $4::uuid))
                ORDER BY created_at DESC, order_id DESC
                LIMIT $5
                """,
                customer_id,
                status,
                after[0] if after else None,
                after[1] if after else None,
                size + 1,
            )
            more = len(rows) > size
            rows = rows[:size]
            orders = [await _order(conn, row) for row in rows]
        cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["order_id"]) if more else ""
        return ListOrdersResponse(orders=orders, page=PageInfo(next_cursor=cursor, has_more=more))


async def _order(conn: asyncpg.Connection, row: asyncpg.Record) -> Order:
    currency = row["currency"]
    lines = await conn.fetch(
        "SELECT * FROM order_lines WHERE order_id = $1 ORDER BY line_no", row["order_id"]
    )
    history = await conn.fetch(
        "SELECT status, reason, changed_at FROM order_status_history WHERE order_id = $1"
        " ORDER BY changed_at, seq",
        row["order_id"],
    )
    return Order(
        order_id=str(row["order_id"]),
        customer_id=row["customer_id"],
        status=OrderStatus.from_string(row["status"]),
        lines=[
            OrderLine(
                sku=x["sku"],
                title=x["title"],
                quantity=x["quantity"],
                unit_price=Money(amount_minor=x["unit_price_minor"], currency=currency),
                line_total=Money(amount_minor=x["line_total_minor"], currency=currency),
            )
            for x in lines
        ],
        total=Money(amount_minor=row["total_minor"], currency=currency),
        refunded=Money(amount_minor=row["refunded_minor"], currency=currency),
        reservation_id=row["reservation_id"],
        payment_id=row["payment_id"],
        workflow_id=row["workflow_id"],
        run_id=row["run_id"],
        status_history=[
            StatusChange(
                status=OrderStatus.from_string(h["status"]),
                changed_at=h["changed_at"],
                reason=h["reason"],
            )
            for h in history
        ],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
