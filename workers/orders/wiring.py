"""Builds orders' parts from the shared runtime: the one place its pieces meet."""

from __future__ import annotations

from activities.orders import OrdersActivities
from agora.service import Runtime, ServiceParts
from contracts.agora.catalog.v1 import CatalogServiceStub
from workers.orders.api import OrdersApi
from workflows.orders import OrderWorkflow, RefundOrderWorkflow


async def build_parts(rt: Runtime) -> ServiceParts:
    activities = OrdersActivities(rt.pool, CatalogServiceStub(rt.channels.get("catalog")))
    return ServiceParts(
        grpc_handlers=[OrdersApi(rt.pool)],
        activities=[
            activities.price,
            activities.record,
            activities.transition,
            activities.record_refund,
            activities.snapshot,
            activities.count_unrecorded,
        ],
        workflows=[OrderWorkflow, RefundOrderWorkflow],
    )
