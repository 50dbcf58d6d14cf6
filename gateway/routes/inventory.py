"""Stock levels: a read for any signed-in caller, and restocking for inventory admins.

The read is a direct gRPC call to inventory; a restock is the `Restock`
workflow on inventory's task queue, keyed by the request's `Idempotency-Key`
header (when given), so a retried POST adds the quantity once.
"""

from __future__ import annotations

from aiohttp import web

from agora import scopes
from contracts.agora.inventory.v1 import GetStockRequest, StockLevel
from gateway.context import principal_of
from gateway.deps import deps
from gateway.idempotency import idempotency_key
from gateway.problems import Problem
from gateway.routing import Route, path_param
from gateway.schemas_inventory import RestockRequest, RestockResponse, StockLevelResponse
from workers.inventory.model import SKU_PATTERN
from workflows.inventory import TASK_QUEUE, RestockInput, RestockWorkflow, restock_workflow_id


def _sku(request: web.Request) -> str:
    return path_param(request, "sku", SKU_PATTERN, "1-64 letters, digits or . _ : -")


def level_response(level: StockLevel | None) -> StockLevelResponse:
    if level is None:
        raise Problem("upstream-error", "inventory answered without the stock level")
    return StockLevelResponse(
        sku=level.sku,
        on_hand=level.on_hand,
        reserved=level.reserved,
        available=level.available,
        version=level.version,
        updated_at=level.updated_at,
    )


async def get_stock(request: web.Request, _: None) -> StockLevelResponse:
    gw = deps(request)
    call = GetStockRequest(sku=_sku(request))
    async with gw.upstream.call(request, "inventory.GetStock") as timeout:
        reply = await gw.upstream.inventory.get_stock(call, timeout=timeout)
    return level_response(reply.stock)


async def restock(request: web.Request, body: RestockRequest) -> RestockResponse:
    gw = deps(request)
    sku = _sku(request)
    key = idempotency_key(request, required=False)
    # Scoped to the caller: two integrations numbering their receipts alike must
    # not have one's restock answered with the other's.
    caller = principal_of(request).subject
    data = RestockInput(key=f"admin:{caller}:{key}", sku=sku, quantity=body.quantity)
    async with gw.upstream.call(request, "temporal.Restock") as timeout:
        result = await gw.upstream.execute_workflow(
            RestockWorkflow.run,
            data,
            id=restock_workflow_id(data.key),
            task_queue=TASK_QUEUE,
            budget_s=timeout,
            # A retry joins the restock in flight, as every keyed write does.
            idempotent=True,
        )
    return RestockResponse(
        sku=result.sku,
        quantity=result.quantity,
        stock=level_response(result.stock_after.to_proto()),
    )


ROUTES = [
    Route(
        "GET",
        "/v1/inventory/{sku}",
        get_stock,
        "Stock level of one sku: on hand, reserved, available",
        "inventory",
        auth=True,
        scopes=frozenset({scopes.CATALOG_READ}),
        route_class="read",
        response=StockLevelResponse,
        problems=("invalid-argument", "not-found"),
    ),
    Route(
        "POST",
        "/v1/admin/inventory/{sku}/restock",
        restock,
        "Add received units to a sku's stock (idempotent with an Idempotency-Key header)",
        "admin",
        auth=True,
        scopes=frozenset({scopes.INVENTORY_WRITE}),
        route_class="write",
        body=RestockRequest,
        response=RestockResponse,
        problems=("invalid-argument", "conflict"),
        idempotency="optional",
    ),
]
