"""Builds inventory's parts from the shared runtime: the one place its pieces meet."""

from __future__ import annotations

from activities.inventory import InventoryActivities
from agora.service import Runtime, ServiceParts
from workers.inventory.api import InventoryApi
from workflows.inventory import ReservationTimeoutWorkflow, RestockWorkflow, SeedStockWorkflow


async def build_parts(rt: Runtime) -> ServiceParts:
    activities = InventoryActivities(
        rt.pool, rt.temporal, task_queue=rt.settings.task_queue("inventory")
    )
    return ServiceParts(
        grpc_handlers=[InventoryApi(rt.pool)],
        activities=[
            activities.reserve,
            activities.release,
            activities.commit,
            activities.restock,
            activities.adjust_stock,
            activities.set_stock,
        ],
        workflows=[ReservationTimeoutWorkflow, RestockWorkflow, SeedStockWorkflow],
    )
