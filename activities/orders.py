"""Orders' activities: pricing through catalog, and the order projection with its events.

Run by the orders worker on task queue `agora-orders`. The projection is written
only here, by the saga, each change with its `orders.events` event in the same
transaction. Every write is idempotent: the saga passes stable keys and a
retried activity finds its work done.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import asyncpg
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from opentelemetry import metrics
from temporalio import activity
from temporalio.exceptions import ApplicationError

from agora import outbox
from agora.money import MAX_AMOUNT_MINOR
from agora.temporal import rejection
from contracts.agora.catalog.v1 import CatalogServiceStub, PriceLinesRequest
from contracts.agora.common.v1 import LineItem, Money
from contracts.agora.orders.v1 import (
    OrderCancelled,
    OrderCompleted,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    OrderRefunded,
    OrderRejected,
    OrderStatus,
    RejectionReason,
)

TOPIC = "orders.events"

# Failure types the saga and the gateway branch on (ApplicationError.type).
PRODUCT_UNAVAILABLE = "ProductUnavailable"
# The reason of a PAYMENT_TIMEOUT the platform caused (no answer from the PSP, its
# outage), unlike an order the customer left unpaid: counted as a saga failure.
PSP_SILENT = "the payment provider did not answer"
INVALID_ORDER = "InvalidOrder"
# The order was placed with this key by another run that has ended (see
# _refuse_second_saga): a second saga for it stops before it prices, reserves or charges.
ORDER_ALREADY_PLACED = "OrderAlreadyPlaced"
# The rejection of an order catalog could not price (OrderInput.pricing_attempts).
# Not a RejectionReason: such an order never enters the orders database.
PRICING_UNAVAILABLE = "PRICING_UNAVAILABLE"
# Rejections that are the platform's failure, not the customer's or the catalog's
# answer: counted `failed` (OrderSagaFailureRatioHigh), as is a PSP that never answered.
PLATFORM_FAILURES = frozenset({"", "PAYMENT_FAILED", PRICING_UNAVAILABLE})

_meter = metrics.get_meter("agora.orders")
_saga_outcomes = _meter.create_counter(
    "agora.order.saga", description="orders reaching a final state, by outcome"
)
_confirm_duration = _meter.create_histogram(
    "agora.order.saga.confirm.duration",
    unit="s",
    description="from the order's creation to its confirmation (payment authorized)",
)


@dataclass
class OrderLineInput:
    sku: str
    quantity: int


@dataclass
class PricedLine:
    sku: str
    title: str
    quantity: int
    unit_price_minor: int
    line_total_minor: int


@dataclass
class PriceInput:
    lines: list[OrderLineInput]
    currency: str
    # The order being priced: one recorded by another run that has ended is refused
    # (ORDER_ALREADY_PLACED) before catalog is asked. Empty in sagas started before.
    order_id: str = ""


@dataclass
class PricedOrder:
    lines: list[PricedLine]
    currency: str
    total_minor: int


@dataclass
class RecordOrderInput:
    order_id: str
    customer_id: str
    idempotency_key: str
    order: PricedOrder


@dataclass
class TransitionInput:
    """A status change of the order, applied once (by `key`) with its event."""

    order_id: str
    status: str  # an OrderStatus name: CONFIRMED, COMPLETED, CANCELLED, REJECTED
    key: str
    reason: str = ""
    rejection: str = ""  # a RejectionReason name, for REJECTED
    reservation_id: str = ""
    payment_id: str = ""
    captured_minor: int = 0
    refunded_minor: int = 0
    cancelled_by: str = ""


@dataclass
class UnrecordedEnd:
    """A saga rejected before its order was recorded (at pricing), for the outcome count."""

    rejection: str  # PRICING_UNAVAILABLE, PRICE_CHANGED, PRODUCT_UNAVAILABLE
    reason: str = ""


@dataclass
class RecordRefundInput:
    order_id: str
    refund_key: str
    refund_id: str
    amount_minor: int
    reason: str = ""
    # A cancel after completion refunds everything and ends the order CANCELLED.
    cancel: bool = False
    cancelled_by: str = ""


@dataclass
class OrderSnapshot:
    order_id: str
    customer_id: str
    status: str
    currency: str
    total_minor: int
    refunded_minor: int
    payment_id: str
    lines: list[PricedLine] = field(default_factory=list)
    # When a cancel after completion (RefundOrder's, or the saga's, of a COMPLETED order)
    # recorded the order CANCELLED, ISO 8601; "" if none did. Such an order's stock was
    # committed and is restocked by the cancel, unlike one the saga compensated.
    cancel_recorded_at: str = ""


FINAL = {"COMPLETED", "CANCELLED", "REJECTED", "REFUNDED"}
# Where a saga has ended: no saga transition leads out of these (refunds after
# completion go through record_refund).
ENDED = FINAL | {"PARTIALLY_REFUNDED"}


class OrdersActivities:
    """Holds orders' dependencies: its pool and the catalog client."""

    def __init__(self, pool: asyncpg.Pool, catalog: CatalogServiceStub):
        self.pool = pool
        self.catalog = catalog

    @activity.defn(name="orders.price")
    async def price(self, data: PriceInput) -> PricedOrder:
        """Current prices from catalog; an unknown or inactive sku rejects the order. An
        order this key placed in a run Temporal no longer holds (past the namespace's
        retention) is refused first, so the POST answers that order, not a new one. An
        order recorded already, and not refused so, is answered as recorded: see
        _recorded_order."""
        if data.order_id:
            async with self.pool.acquire() as conn:
                await _refuse_second_saga(
                    conn, uuid.UUID(data.order_id), activity.info().workflow_run_id or ""
                )
                recorded = await _recorded_order(conn, uuid.UUID(data.order_id))
            if recorded is not None:
                return recorded
        if not data.lines:
            raise rejection("an order needs at least one line", type=INVALID_ORDER)
        try:
            reply = await self.catalog.price_lines(
                PriceLinesRequest(
                    lines=[LineItem(sku=line.sku, quantity=line.quantity) for line in data.lines],
                    currency=data.currency,
                ),
                timeout=5,
            )
        except GRPCError as error:
            if error.status == Status.INVALID_ARGUMENT:
                # The order itself is wrong (a currency catalog does not sell in, too
                # many lines): retrying cannot help, the order is rejected.
                raise rejection(
                    error.message or "catalog refused the order's lines", type=INVALID_ORDER
                ) from None
            raise
        if reply.unavailable_skus:
            raise rejection(
                f"not available: {', '.join(sorted(reply.unavailable_skus))}",
                sorted(reply.unavailable_skus),
                type=PRODUCT_UNAVAILABLE,
            )
        lines = [
            PricedLine(
                sku=line.sku,
                title=line.title,
                quantity=line.quantity,
                unit_price_minor=line.unit_price.amount_minor if line.unit_price else 0,
                line_total_minor=line.line_total.amount_minor if line.line_total else 0,
            )
            for line in reply.lines
        ]
        total_minor = sum(x.line_total_minor for x in lines)
        if not 0 < total_minor <= MAX_AMOUNT_MINOR:
            # Refused here, before the POST's answer, not by payments after a 201.
            raise rejection(
                f"the order's total must be between 1 and {MAX_AMOUNT_MINOR} minor units,"
                f" not {total_minor}",
                type=INVALID_ORDER,
            )
        return PricedOrder(lines=lines, currency=data.currency, total_minor=total_minor)

    @activity.defn(name="orders.record")
    async def record(self, data: RecordOrderInput) -> None:
        """The order enters the projection as PENDING, with OrderPlaced."""
        info = activity.info()
        order_id = uuid.UUID(data.order_id)
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """
                INSERT INTO orders (order_id, customer_id, idempotency_key, status, currency,
                                    total_minor, workflow_id, run_id)
                VALUES ($1, $2, $3, 'PENDING', $4, $5, $6, $7)
                ON CONFLICT (order_id) DO NOTHING
                RETURNING true
                """,
                order_id,
                data.customer_id,
                data.idempotency_key,
                data.order.currency,
                data.order.total_minor,
                info.workflow_id or "",
                info.workflow_run_id or "",
            )
            if not inserted:
                await _refuse_second_saga(conn, order_id, info.workflow_run_id or "")
                return
            await conn.executemany(
                "INSERT INTO order_lines (order_id, line_no, sku, title, quantity,"
                " unit_price_minor, line_total_minor) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [
                    (
                        order_id,
                        n,
                        x.sku,
                        x.title,
                        x.quantity,
                        x.unit_price_minor,
                        x.line_total_minor,
                    )
                    for n, x in enumerate(data.order.lines, start=1)
                ],
            )
            await conn.execute(
                "INSERT INTO order_status_history (order_id, transition_key, status)"
                " VALUES ($1, 'placed', 'PENDING')",
                order_id,
            )
            await self._event(
                conn,
                data.order_id,
                OrderPlaced(
                    order_id=data.order_id,
                    customer_id=data.customer_id,
                    lines=[_line(x, data.order.currency) for x in data.order.lines],
                    total=Money(amount_minor=data.order.total_minor, currency=data.order.currency),
                ),
            )

    @activity.defn(name="orders.transition")
    async def transition(self, data: TransitionInput) -> None:
        order_id = uuid.UUID(data.order_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, currency, created_at FROM orders WHERE order_id = $1 FOR UPDATE",
                order_id,
            )
            if row is None:
                raise ApplicationError(
                    f"no order {data.order_id}", type="OrderNotFound", non_retryable=True
                )
            if row["status"] in ENDED:
                # Only a second saga for an ended order gets here (the gateway never
                # starts one; record refuses one): its steps must not rewrite the end.
                activity.logger.warning(
                    "transition refused: the order has ended",
                    extra={"order_id": data.order_id, "status": row["status"], "to": data.status},
                )
                return
            first_time = await conn.fetchval(
                "INSERT INTO order_status_history (order_id, transition_key, status, reason)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
                order_id,
                data.key,
                data.status,
                data.reason,
            )
            if not first_time:
                return
            await conn.execute(
                """
                UPDATE orders SET status = $2, reason = $3, updated_at = now(),
                    reservation_id = coalesce(nullif($4, ''), reservation_id),
                    payment_id = coalesce(nullif($5, ''), payment_id),
                    refunded_minor = refunded_minor + $6
                WHERE order_id = $1
                """,
                order_id,
                data.status,
                data.reason,
                data.reservation_id,
                data.payment_id,
                data.refunded_minor,
            )
            event = _transition_event(data, row["currency"], row["status"])
            await self._event(conn, data.order_id, event)
        self._observe(data, row["created_at"])

    @activity.defn(name="orders.count_unrecorded")
    async def count_unrecorded(self, data: UnrecordedEnd) -> None:
        """Counts a saga rejected before its order was recorded: it makes no transition
        for `_observe` to count, and a catalog outage rejects every order this way."""
        _saga_outcomes.add(1, {"outcome": saga_outcome("REJECTED", data.rejection, data.reason)})

    @activity.defn(name="orders.record_refund")
    async def record_refund(self, data: RecordRefundInput) -> OrderSnapshot:
        order_id = uuid.UUID(data.order_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, currency, total_minor, refunded_minor FROM orders"
                " WHERE order_id = $1 FOR UPDATE",
                order_id,
            )
            if row is None:
                raise ApplicationError(
                    f"no order {data.order_id}", type="OrderNotFound", non_retryable=True
                )
            inserted = await conn.fetchval(
                "INSERT INTO order_refunds (refund_key, order_id, refund_id, amount_minor, reason)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
                data.refund_key,
                order_id,
                data.refund_id,
                data.amount_minor,
                data.reason,
            )
            if inserted:
                refunded = row["refunded_minor"] + data.amount_minor
                # A partial refund recorded after a cancel (it reached payments first,
                # its record came second) adds its amount; the order stays cancelled.
                if data.cancel or row["status"] == "CANCELLED":
                    status = "CANCELLED"
                elif refunded >= row["total_minor"]:
                    status = "REFUNDED"
                else:
                    status = "PARTIALLY_REFUNDED"
                # The order's reason is its last status change's, as transition keeps it.
                await conn.execute(
                    "UPDATE orders SET status = $2, refunded_minor = $3, reason = $4,"
                    " updated_at = now() WHERE order_id = $1",
                    order_id,
                    status,
                    refunded,
                    data.reason,
                )
                await conn.execute(
                    "INSERT INTO order_status_history (order_id, transition_key, status, reason)"
                    " VALUES ($1, $2, $3, $4)",
                    order_id,
                    f"refund:{data.refund_key}",
                    status,
                    data.reason,
                )
                total_refunded = Money(amount_minor=refunded, currency=row["currency"])
                event = (
                    OrderCancelled(
                        order_id=data.order_id,
                        previous_status=OrderStatus.from_string(row["status"]),
                        cancelled_by=data.cancelled_by,
                        reason=data.reason,
                        refunded=total_refunded,
                    )
                    if data.cancel
                    else OrderRefunded(
                        order_id=data.order_id,
                        refund_id=data.refund_id,
                        amount=Money(amount_minor=data.amount_minor, currency=row["currency"]),
                        total_refunded=total_refunded,
                        reason=data.reason,
                    )
                )
                await self._event(conn, data.order_id, event)
        return await self.snapshot(data.order_id)

    @activity.defn(name="orders.snapshot")
    async def snapshot(self, order_id: str) -> OrderSnapshot:
        key = uuid.UUID(order_id)
        # One snapshot: the order, its lines and its cancel as they were together.
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(
                "SELECT order_id, customer_id, status, currency, total_minor, refunded_minor,"
                " payment_id FROM orders WHERE order_id = $1",
                key,
            )
            if row is None:
                raise ApplicationError(
                    f"no order {order_id}", type="OrderNotFound", non_retryable=True
                )
            lines = await conn.fetch(
                "SELECT sku, title, quantity, unit_price_minor, line_total_minor FROM order_lines"
                " WHERE order_id = $1 ORDER BY line_no",
                key,
            )
            # record_refund's CANCELLED, keyed by its refund key (the saga's is
            # `cancelled`): the first, the cancel's own. A partial refund recorded after
            # it keeps the status CANCELLED and is a later row of the same kind.
            cancelled_at = await conn.fetchval(
                "SELECT changed_at FROM order_status_history WHERE order_id = $1"
                " AND status = 'CANCELLED' AND transition_key LIKE 'refund:%'"
                " ORDER BY seq LIMIT 1",
                key,
            )
        return OrderSnapshot(
            order_id=str(row["order_id"]),
            customer_id=row["customer_id"],
            status=row["status"],
            currency=row["currency"],
            total_minor=row["total_minor"],
            refunded_minor=row["refunded_minor"],
            payment_id=row["payment_id"],
            lines=[PricedLine(**dict(x)) for x in lines],
            cancel_recorded_at=cancelled_at.isoformat() if cancelled_at else "",
        )

    async def _event(self, conn: asyncpg.Connection, order_id: str, payload: object) -> None:
        info = activity.info()
        await outbox.append(
            conn,
            producer="orders",
            topic=TOPIC,
            aggregate_type="order",
            aggregate_id=order_id,
            payload=payload,  # type: ignore[arg-type]
            workflow=outbox.WorkflowRef(info.workflow_id or "", info.workflow_run_id or ""),
        )

    def _observe(self, data: TransitionInput, created_at: dt.datetime) -> None:
        if data.status == "CONFIRMED":
            age = dt.datetime.now(dt.UTC) - created_at
            _confirm_duration.record(max(age.total_seconds(), 0.0))
        elif data.status in FINAL:
            outcome = saga_outcome(data.status, data.rejection, data.reason)
            _saga_outcomes.add(1, {"outcome": outcome})


def saga_outcome(status: str, rejection: str, reason: str) -> str:
    """What an ended saga counts as: a business rejection (decline, out of stock, an
    unpaid order, a price changed) is an outcome, not a failure; a saga that ended for
    any other reason, or because the payment provider or catalog never answered (an
    outage), is one."""
    outcome = {"COMPLETED": "completed", "CANCELLED": "cancelled"}.get(status)
    if outcome is not None:
        return outcome
    # The reason may go on with the compensations that failed ("...; void payment
    # failed", workflows/orders.py set_reason): the rejection's own detail comes first.
    psp_silent = reason.split("; ", 1)[0] == PSP_SILENT
    business = rejection not in PLATFORM_FAILURES and not psp_silent
    return "rejected" if business else "failed"


def _line(line: PricedLine, currency: str) -> OrderLine:
    return OrderLine(
        sku=line.sku,
        title=line.title,
        quantity=line.quantity,
        unit_price=Money(amount_minor=line.unit_price_minor, currency=currency),
        line_total=Money(amount_minor=line.line_total_minor, currency=currency),
    )


def _transition_event(data: TransitionInput, currency: str, previous: str) -> object:
    if data.status == "CONFIRMED":
        return OrderConfirmed(
            order_id=data.order_id, reservation_id=data.reservation_id, payment_id=data.payment_id
        )
    if data.status == "COMPLETED":
        return OrderCompleted(
            order_id=data.order_id,
            captured=Money(amount_minor=data.captured_minor, currency=currency),
        )
    if data.status == "CANCELLED":
        return OrderCancelled(
            order_id=data.order_id,
            previous_status=OrderStatus.from_string(previous),
            cancelled_by=data.cancelled_by,
            reason=data.reason,
            refunded=Money(amount_minor=data.refunded_minor, currency=currency),
        )
    if data.status == "REJECTED":
        return OrderRejected(
            order_id=data.order_id,
            reason=RejectionReason.from_string(data.rejection or "PAYMENT_FAILED"),
            detail=data.reason,
        )
    raise ApplicationError(
        f"unknown transition {data.status}", type=INVALID_ORDER, non_retryable=True
    )


async def _refuse_second_saga(conn: asyncpg.Connection, order_id: uuid.UUID, run_id: str) -> None:
    """Refuse a second saga for an order that has ended (its key used again once Temporal
    no longer holds the first run, past the namespace's retention): it must stop before
    it reserves or charges. This run's own order (a retried step) is fine, as is none."""
    row = await conn.fetchrow("SELECT status, run_id FROM orders WHERE order_id = $1", order_id)
    if row is not None and row["run_id"] != run_id and row["status"] in ENDED:
        raise ApplicationError(
            f"order {order_id} was placed before with this key and is {row['status'].lower()}",
            type=ORDER_ALREADY_PLACED,
            non_retryable=True,
        )


async def _recorded_order(conn: asyncpg.Connection, order_id: uuid.UUID) -> PricedOrder | None:
    """The order as `record` wrote it, if it did. The saga prices and records in its first
    workflow task, as local activities whose results reach its history only when that
    task completes: a task lost after the record (a worker killed, its completion
    refused) is run again, and a reset to it runs it in a new run. Priced anew, the order
    could then be charged at a price its projection and OrderPlaced do not hold, or
    rejected (a product since deactivated, catalog down) while its projection stays
    PENDING for ever. So the price step answers what was recorded."""
    row = await conn.fetchrow(
        "SELECT currency, total_minor FROM orders WHERE order_id = $1", order_id
    )
    if row is None:
        return None
    lines = await conn.fetch(
        "SELECT sku, title, quantity, unit_price_minor, line_total_minor FROM order_lines"
        " WHERE order_id = $1 ORDER BY line_no",
        order_id,
    )
    return PricedOrder(
        lines=[PricedLine(**dict(x)) for x in lines],
        currency=row["currency"],
        total_minor=row["total_minor"],
    )
