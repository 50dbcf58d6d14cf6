"""Builds inventory's parts from the shared runtime: the one place its pieces meet."""

from __future__ import annotations

from datetime import timedelta

from activities.inventory import InventoryActivities
from agora.schedules import ensure_interval_schedule, interval_schedule
from agora.service import Runtime, ServiceParts
from workers.inventory.api import InventoryApi
from workflows.inventory import (
    RESERVATION_SWEEP_SCHEDULE_ID,
    ReservationSweepWorkflow,
    ReservationTimeoutWorkflow,
    RestockWorkflow,
    SeedStockWorkflow,
)


async def build_parts(rt: Runtime) -> ServiceParts:
    every = timedelta(seconds=rt.settings.inventory_reservation_sweep_s)
    await ensure_interval_schedule(
        rt.temporal,
        RESERVATION_SWEEP_SCHEDULE_ID,
        interval_schedule(
            ReservationSweepWorkflow.run,
            RESERVATION_SWEEP_SCHEDULE_ID,
            every,
            rt.settings.task_queue("inventory"),
        ),
        every,
    )
    activities = InventoryActivities(rt.pool)
    return ServiceParts(
        grpc_handlers=[InventoryApi(rt.pool)],
        activities=[
            activities.reserve,
            activities.release,
            activities.expire_due,
            activities.commit,
            activities.restock,
            activities.adjust_stock,
            activities.set_stock,
        ],
        workflows=[
            ReservationSweepWorkflow,
            ReservationTimeoutWorkflow,
            RestockWorkflow,
            SeedStockWorkflow,
        ],
    )
