"""Inventory's activities, run by inventory's worker on `agora-inventory` for the order saga
and inventory's own workflows.

Each activity is one transaction keyed by what the caller passes (the
reservation id, an idempotency key), so Temporal's retries never apply it
twice: a retried call returns the first result, business rejections included.
Rejections (out of stock, unknown sku, bad input) are non-retryable
`ApplicationError`s whose `type` is stable: `OutOfStock`, `UnknownSku`,
`InvalidQuantity`, `InvalidArgument`, `ReservationNotFound`,
`ReservationNotHeld`, `IdempotencyKeyReused`.

Expiry is `expire_due`, run by the `ReservationSweep` workflow on a Temporal
Schedule: it releases (as expired) every held reservation whose `expires_at` has
passed. One sweep per interval replaces a timer workflow per reservation, which
cost the Temporal server a workflow start and the reserve a round trip per order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from temporalio import activity

from agora import outbox
from agora.errors import DomainError
from agora.temporal import business_rejections
from workers.inventory import idempotency, reservations, stocking
from workers.inventory.model import (
    REASON_COMPENSATION,
    REASON_EXPIRED,
    CommitResult,
    ReleaseResult,
    ReserveResult,
    RestockResult,
    SetStockResult,
    StockLine,
    StockSnapshot,
)

__all__ = [
    "AdjustStockInput",
    "CommitInput",
    "CommitResult",
    "ExpireDueInput",
    "ExpireDueResult",
    "InventoryActivities",
    "ReleaseInput",
    "ReleaseResult",
    "ReservationTimeoutInput",
    "ReserveInput",
    "ReserveResult",
    "RestockInput",
    "RestockResult",
    "SetStockInput",
    "SetStockResult",
    "StockLine",
    "StockSnapshot",
]

log = logging.getLogger(__name__)
# A release refused with one of these gets the same answer however often it is
# retried; anything else (a lost connection, a timeout) fails the sweep's activity
# and Temporal retries it.
_REFUSED_FOR_GOOD = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
    DomainError,
)
# Idempotency records past their retention deleted per sweep batch: with one sweep
# every 30 s, 14 million a day, against the ~5 million 30 orders/s would add.
PRUNE_BATCH = 5000


@dataclass
class ReserveInput:
    """Hold all lines or none for `ttl_seconds`; `reservation_id` is the idempotency key."""

    reservation_id: str
    lines: list[StockLine]
    ttl_seconds: int
    order_id: str = ""


@dataclass
class ReleaseInput:
    """`reason`: "compensation" | "order_cancelled" | "expired" (the timer's own)."""

    reservation_id: str
    reason: str = REASON_COMPENSATION


@dataclass
class CommitInput:
    reservation_id: str


@dataclass
class RestockInput:
    key: str
    sku: str
    quantity: int


@dataclass
class AdjustStockInput:
    key: str
    sku: str
    delta: int


@dataclass
class SetStockInput:
    """Initial (or counted) on_hand per sku, at most 1,000 levels per activity call.

    `overwrite=False` (seeding) only creates skus without a stock row, so
    seeding again is harmless; the SeedStock workflow splits larger sets.
    """

    key: str
    levels: list[StockLine] = field(default_factory=list)
    overwrite: bool = False


@dataclass
class ExpireDueInput:
    """Expire up to `limit` held reservations whose expiry is at or before `as_of` (ISO 8601;
    the sweep passes its workflow time, so a time-skipping test moves it too)."""

    as_of: str
    limit: int = 200
    # The sweep's cursor: only reservations after (after_expires_at, after_id) in the
    # sweep's order, so holds refused for good are passed over, not read again by
    # every batch of the run ("" for the first batch).
    after_expires_at: str = ""
    after_id: str = ""


@dataclass
class ExpireDueResult:
    expired: int  # reservations this call expired (a settled or already expired one is not)
    more: bool  # the batch was full: more may be due after it
    # Due reservations whose release the database refuses for good (a stock row an
    # operator corrected under a hold, for one): logged, left held, passed over.
    failed: int = 0
    # The last reservation this batch looked at: the next batch's cursor.
    last_expires_at: str = ""
    last_id: str = ""


@dataclass
class ReservationTimeoutInput:
    """Input of the per-reservation timer of earlier versions (kept to drain open ones)."""

    reservation_id: str
    expires_at: str  # ISO 8601, from the reservation row


def _workflow_ref() -> outbox.WorkflowRef | None:
    """The workflow that caused an event; none when called outside an activity (tests, tools)."""
    if not activity.in_activity():
        return None
    info = activity.info()
    return outbox.WorkflowRef(info.workflow_id or "", info.workflow_run_id or "")


class InventoryActivities:
    """Holds inventory's dependencies; each method is one idempotent activity."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @activity.defn(name="inventory.reserve")
    async def reserve(self, data: ReserveInput) -> ReserveResult:
        with business_rejections():
            async with self.pool.acquire() as conn:
                return await reservations.reserve(
                    conn,
                    data.reservation_id,
                    data.lines,
                    data.ttl_seconds,
                    order_id=data.order_id,
                    workflow=_workflow_ref(),
                )

    @activity.defn(name="inventory.release")
    async def release(self, data: ReleaseInput) -> ReleaseResult:
        with business_rejections():
            async with self.pool.acquire() as conn:
                return await reservations.release(
                    conn, data.reservation_id, data.reason, workflow=_workflow_ref()
                )

    @activity.defn(name="inventory.expire_due")
    async def expire_due(self, data: ExpireDueInput) -> ExpireDueResult:
        """Each reservation is its own release transaction (keyed by id and reason
        `expired`), so a retried sweep or a release racing it changes nothing twice.
        Each call also prunes idempotency records and settled reservations past their
        retention (the sweep is inventory's housekeeping: its schedule runs it however
        quiet the shop is).

        A release the database refuses for good is logged and passed over: one
        such hold used to fail every attempt of the activity, and with it the
        expiry of every hold due after it. The next batch starts after the last
        reservation of this one (the sweep passes the cursor on): a batch of
        nothing but refused holds, read again, stalled every hold due after them."""
        as_of = datetime.fromisoformat(data.as_of)
        after = (
            reservations.DueKey(datetime.fromisoformat(data.after_expires_at), data.after_id)
            if data.after_expires_at
            else None
        )
        expired = failed = 0
        async with self.pool.acquire() as conn:
            due = await reservations.due(conn, as_of, data.limit, after)
            for reservation_id in (key.reservation_id for key in due):
                try:
                    result = await reservations.release(
                        conn, reservation_id, REASON_EXPIRED, workflow=_workflow_ref()
                    )
                except _REFUSED_FOR_GOOD as error:
                    failed += 1
                    log.error(
                        "a due reservation could not be expired; it stays held",
                        extra={"reservation_id": reservation_id, "error": str(error)},
                    )
                    continue
                expired += result.released
            pruned = await idempotency.prune(conn, PRUNE_BATCH)
            settled = await reservations.prune(conn, PRUNE_BATCH)
        if pruned or settled:
            log.info(
                "idempotency records and settled reservations pruned",
                extra={"rows": pruned, "reservations": settled},
            )
        last = due[-1] if due else after
        return ExpireDueResult(
            expired=expired,
            more=len(due) == data.limit,
            failed=failed,
            last_expires_at=last.expires_at.isoformat() if last else "",
            last_id=last.reservation_id if last else "",
        )

    @activity.defn(name="inventory.commit")
    async def commit(self, data: CommitInput) -> CommitResult:
        with business_rejections():
            async with self.pool.acquire() as conn:
                return await reservations.commit(
                    conn, data.reservation_id, workflow=_workflow_ref()
                )

    @activity.defn(name="inventory.restock")
    async def restock(self, data: RestockInput) -> RestockResult:
        with business_rejections():
            async with self.pool.acquire() as conn:
                return await stocking.restock(
                    conn, data.key, data.sku, data.quantity, workflow=_workflow_ref()
                )

    @activity.defn(name="inventory.adjust_stock")
    async def adjust_stock(self, data: AdjustStockInput) -> RestockResult:
        with business_rejections():
            async with self.pool.acquire() as conn:
                return await stocking.adjust(
                    conn, data.key, data.sku, data.delta, workflow=_workflow_ref()
                )

    @activity.defn(name="inventory.set_stock")
    async def set_stock(self, data: SetStockInput) -> SetStockResult:
        with business_rejections():
            async with self.pool.acquire() as conn:
                return await stocking.set_stock(
                    conn, data.key, data.levels, overwrite=data.overwrite, workflow=_workflow_ref()
                )
