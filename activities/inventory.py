"""Inventory's activities, run by inventory's worker on `agora-inventory` for the order saga
and inventory's own workflows.

Each activity is one transaction keyed by what the caller passes (the
reservation id, an idempotency key), so Temporal's retries never apply it
twice: a retried call returns the first result, business rejections included.
Rejections (out of stock, unknown sku, bad input) are non-retryable
`ApplicationError`s whose `type` is stable: `OutOfStock`, `UnknownSku`,
`InvalidQuantity`, `InvalidArgument`, `ReservationNotFound`,
`ReservationNotHeld`, `IdempotencyKeyReused`.

`reserve` also makes sure the reservation's expiry timer exists (the
`ReservationTimeout` workflow, id `reservation-<id>`), after its transaction
committed, and again on every retry while the reservation is held, so a crash
between the two cannot leave a hold without its timer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from agora import outbox
from agora.temporal import business_rejections
from workers.inventory import reservations, stocking
from workers.inventory.model import (
    HELD,
    REASON_COMPENSATION,
    CommitResult,
    ReleaseResult,
    ReserveResult,
    RestockResult,
    SetStockResult,
    StockLine,
    StockSnapshot,
)
from workers.inventory.names import (
    RESERVATION_TIMEOUT_WORKFLOW,
    TASK_QUEUE,
    reservation_timeout_workflow_id,
)

__all__ = [
    "AdjustStockInput",
    "CommitInput",
    "CommitResult",
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
class ReservationTimeoutInput:
    reservation_id: str
    expires_at: str  # ISO 8601, from the reservation row


def _workflow_ref() -> outbox.WorkflowRef | None:
    """The workflow that caused an event; none when called outside an activity (tests, tools)."""
    if not activity.in_activity():
        return None
    info = activity.info()
    return outbox.WorkflowRef(info.workflow_id or "", info.workflow_run_id or "")


class InventoryActivities:
    """Holds inventory's dependencies; each method is one idempotent activity.

    `temporal` starts reservation timers; `None` (unit tests of the store
    alone) leaves reservations to expire only when released by hand.
    """

    def __init__(
        self, pool: asyncpg.Pool, temporal: Client | None, *, task_queue: str = TASK_QUEUE
    ):
        self.pool = pool
        self.temporal = temporal
        self.task_queue = task_queue

    @activity.defn(name="inventory.reserve")
    async def reserve(self, data: ReserveInput) -> ReserveResult:
        with business_rejections():
            async with self.pool.acquire() as conn:
                result = await reservations.reserve(
                    conn,
                    data.reservation_id,
                    data.lines,
                    data.ttl_seconds,
                    order_id=data.order_id,
                    workflow=_workflow_ref(),
                )
        if result.status == HELD:
            await self._ensure_timer(result)
        return result

    @activity.defn(name="inventory.release")
    async def release(self, data: ReleaseInput) -> ReleaseResult:
        with business_rejections():
            async with self.pool.acquire() as conn:
                return await reservations.release(
                    conn, data.reservation_id, data.reason, workflow=_workflow_ref()
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

    async def _ensure_timer(self, result: ReserveResult) -> None:
        if self.temporal is None:
            return
        try:
            await self.temporal.start_workflow(
                RESERVATION_TIMEOUT_WORKFLOW,
                ReservationTimeoutInput(result.reservation_id, result.expires_at),
                id=reservation_timeout_workflow_id(result.reservation_id),
                task_queue=self.task_queue,
                # A closed timer must not start again: its reservation is settled.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            pass  # a retry: the first attempt started it
