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
            return GetOrderResponse(order=(await _orders(conn, [row]))[0])

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
        if message.status and message.status not in OrderStatus.__members__.values():
            # A value this service does not know (a newer client's) parses as a nameless
            # member: it would list nothing, as if the customer had no such orders.
            raise InvalidArgument(f"status {int(message.status)} is not an order status")
        status = message.status.name if message.status else None
        # One snapshot, as get_order's: each order with the history it had when read.
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            query, args = _list_page(customer_id, status, after, size)
            rows = await conn.fetch(query, *args)
            more = len(rows) > size
            rows = rows[:size]
            orders = await _orders(conn, rows)
        cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["order_id"]) if more else ""
        return ListOrdersResponse(orders=orders, page=PageInfo(next_cursor=cursor, has_more=more))


def _list_page(
    customer_id: str, status: str | None, after: tuple[object, object] | None, size: int
) -> tuple[str, list[object]]:
    """The page's query and its arguments, with only the conditions it has: an `$n IS
    NULL OR …` would keep a generic plan (asyncpg prepares each text once) from using
    the (customer_id, created_at, order_id) index for the cursor, and read every newer
    row. Each placeholder is numbered by the argument it is added with."""
    args: list[object] = [customer_id]
    where = ["customer_id = $1"]
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if after is not None:
        args.extend(after)
        where.append(f"(created_at, order_id) < (${len(args) - 1}, ${len(args)}::uuid)")
    args.append(size + 1)
    query = (
        f"SELECT * FROM orders WHERE {' AND '.join(where)}"
        f" ORDER BY created_at DESC, order_id DESC LIMIT ${len(args)}"
    )
    return query, args


async def _orders(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[Order]:
    """The orders of `rows`, with their lines and histories read in one query each."""
    ids = [row["order_id"] for row in rows]
    lines: dict[uuid.UUID, list[asyncpg.Record]] = {i: [] for i in ids}
    history: dict[uuid.UUID, list[asyncpg.Record]] = {i: [] for i in ids}
    for line in await conn.fetch(
        "SELECT * FROM order_lines WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, line_no",
        ids,
    ):
        lines[line["order_id"]].append(line)
    for change in await conn.fetch(
        "SELECT order_id, status, reason, changed_at FROM order_status_history"
        " WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, changed_at, seq",
        ids,
    ):
        history[change["order_id"]].append(change)
    return [_order(row, lines[row["order_id"]], history[row["order_id"]]) for row in rows]


def _order(
    row: asyncpg.Record, lines: list[asyncpg.Record], history: list[asyncpg.Record]
) -> Order:
    currency = row["currency"]
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
        reason=row["reason"],
    )
