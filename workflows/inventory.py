"""Inventory's workflows: reservation expiry, admin restock, and stock seeding.

Reserve / release / commit are activities the order saga calls directly on
`agora-inventory`; these workflows are inventory's own processes:

* `ReservationSweep`, started by a Temporal Schedule every
  `AGORA_INVENTORY_RESERVATION_SWEEP_S`: expires every held reservation whose
  `expires_at` has passed (`inventory.expire_due`, in batches). The schedule is
  durable (a missed run is caught up by the next one), and an expiry is a
  release keyed by reservation and reason, so a sweep retried or racing a
  commit changes nothing twice.
* `ReservationTimeout` (id `reservation-<id>`): the per-reservation timer of
  earlier versions, no longer started; registered so timers already open finish.
* `Restock` (id `restock-<key>`): the admin route's write path.
* `SeedStock` (id `seed-stock-<key>`): initial on_hand for many skus, in batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.inventory import (
        ExpireDueInput,
        ExpireDueResult,
        InventoryActivities,
        ReleaseInput,
        ReleaseResult,
        ReservationTimeoutInput,
        RestockInput,
        RestockResult,
        SetStockInput,
        SetStockResult,
        StockLine,
    )
    from workers.inventory.model import MAX_LINES, REASON_EXPIRED
    from workers.inventory.names import (
        RESERVATION_SWEEP_SCHEDULE_ID,
        RESERVATION_SWEEP_WORKFLOW,
        RESERVATION_TIMEOUT_WORKFLOW,
        RESTOCK_WORKFLOW,
        SEED_STOCK_WORKFLOW,
        TASK_QUEUE,
        restock_workflow_id,
        seed_stock_workflow_id,
    )

__all__ = [
    "RESERVATION_SWEEP_SCHEDULE_ID",
    "TASK_QUEUE",
    "ExpireDueInput",
    "ReservationSweepWorkflow",
    "ReservationTimeoutInput",
    "ReservationTimeoutWorkflow",
    "RestockInput",
    "RestockWorkflow",
    "SeedProgress",
    "SeedStockInput",
    "SeedStockWorkflow",
    "restock_workflow_id",
    "seed_stock_workflow_id",
]

STEP_TIMEOUT = timedelta(seconds=10)
BATCH_STEP_TIMEOUT = timedelta(seconds=60)


@contextmanager
def _rejections_surface() -> Iterator[None]:
    """An activity's business rejection becomes the workflow's own failure, same type."""
    try:
        yield
    except ActivityError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.non_retryable:
            raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from err
        raise


# One sweep expires at most this many batches; the next scheduled run takes the rest.
SWEEP_BATCHES = 20


@workflow.defn(name=RESERVATION_SWEEP_WORKFLOW)
class ReservationSweepWorkflow:
    """Expires the held reservations due by the sweep's start (its workflow time)."""

    @workflow.run
    async def run(self) -> int:
        as_of = workflow.now().isoformat()
        expired = 0
        cursor = ExpireDueInput(as_of)
        for _ in range(SWEEP_BATCHES):
            # Retried until the database takes it (default policy): expiry must happen.
            # Each batch starts after the last one's (only the activity's input
            # changes, which replay does not compare: no patch needed).
            done: ExpireDueResult = await workflow.execute_activity_method(
                InventoryActivities.expire_due,
                cursor,
                start_to_close_timeout=BATCH_STEP_TIMEOUT,
            )
            cursor = ExpireDueInput(
                as_of, after_expires_at=done.last_expires_at, after_id=done.last_id
            )
            expired += done.expired
            if not done.more:
                break
        return expired


@workflow.defn(name=RESERVATION_TIMEOUT_WORKFLOW)
class ReservationTimeoutWorkflow:
    """Releases a reservation when its TTL runs out, unless it was settled first."""

    @workflow.run
    async def run(self, data: ReservationTimeoutInput) -> ReleaseResult:
        remaining = datetime.fromisoformat(data.expires_at) - workflow.now()
        if remaining > timedelta(0):
            await workflow.sleep(remaining)
        # Retried until the database takes it (default policy): expiry must happen.
        return await workflow.execute_activity_method(
            InventoryActivities.release,
            ReleaseInput(data.reservation_id, reason=REASON_EXPIRED),
            start_to_close_timeout=STEP_TIMEOUT,
        )


@workflow.defn(name=RESTOCK_WORKFLOW)
class RestockWorkflow:
    @workflow.run
    async def run(self, data: RestockInput) -> RestockResult:
        with _rejections_surface():
            return await workflow.execute_activity_method(
                InventoryActivities.restock, data, start_to_close_timeout=STEP_TIMEOUT
            )


@dataclass
class SeedStockInput:
    """Initial on_hand for many skus. Keep one workflow's input under ~20,000 levels
    (Temporal's payload limit); start several workflows (keys) for more."""

    key: str
    levels: list[StockLine] = field(default_factory=list)
    overwrite: bool = False
    batch_size: int = MAX_LINES


@dataclass
class SeedProgress:
    batches_done: int
    batches_total: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0


@workflow.defn(name=SEED_STOCK_WORKFLOW)
class SeedStockWorkflow:
    """Sets stock in batches (one transaction each, keyed `<key>:<n>`); `progress` query."""

    def __init__(self) -> None:
        self._progress = SeedProgress(0, 0)

    @workflow.query
    def progress(self) -> SeedProgress:
        return self._progress

    @workflow.run
    async def run(self, data: SeedStockInput) -> SeedProgress:
        size = max(1, min(data.batch_size, MAX_LINES))
        batches = [data.levels[i : i + size] for i in range(0, len(data.levels), size)]
        self._progress = SeedProgress(0, len(batches))
        for number, batch in enumerate(batches):
            with _rejections_surface():
                done: SetStockResult = await workflow.execute_activity_method(
                    InventoryActivities.set_stock,
                    SetStockInput(f"{data.key}:{number}", batch, data.overwrite),
                    start_to_close_timeout=BATCH_STEP_TIMEOUT,
                )
            progress = self._progress
            self._progress = SeedProgress(
                number + 1,
                len(batches),
                progress.created + done.created,
                progress.updated + done.updated,
                progress.unchanged + done.unchanged,
            )
        return self._progress
