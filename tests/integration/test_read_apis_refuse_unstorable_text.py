"""Read APIs refuse text PostgreSQL cannot hold as the caller's mistake, not a server failure.

A NUL in a field sent to a query fails it (SQLSTATE 22021): without a check the
caller gets UNKNOWN (the gateway a 502), as if the service were broken.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from agora.config import Settings
from agora.grpc import Channels
from contracts.agora.audit.v1 import (
    AggregateRef,
    AuditServiceStub,
    ExportAggregateRequest,
    ExportOrderRequest,
    QueryEventsRequest,
)
from contracts.agora.catalog.v1 import (
    BatchGetProductsRequest,
    CatalogServiceStub,
    GetProductRequest,
    PriceLinesRequest,
)
from contracts.agora.common.v1 import LineItem
from contracts.agora.orders.v1 import ListOrdersRequest, OrdersServiceStub
from tests.integration.conftest import Services

pytestmark = pytest.mark.integration

NUL = "bad\x00text"


@pytest_asyncio.fixture(scope="module")
async def channels(settings: Settings, services: Services) -> AsyncIterator[Channels]:
    for service in ("catalog", "orders", "audit"):
        services(service)
    channels = Channels(settings, caller="gateway")
    yield channels
    channels.close()


async def status_of(call: Awaitable[Any]) -> Status:
    with pytest.raises(GRPCError) as caught:
        await call
    return caught.value.status


CATALOG_CALLS: dict[str, Callable[[CatalogServiceStub], Awaitable[Any]]] = {
    "get_product": lambda c: c.get_product(GetProductRequest(sku=NUL)),
    "batch_get_products": lambda c: c.batch_get_products(
        BatchGetProductsRequest(skus=["FINE-SKU", NUL])
    ),
    "price_lines": lambda c: c.price_lines(
        PriceLinesRequest(lines=[LineItem(sku=NUL, quantity=1)], currency="EUR")
    ),
}


@pytest.mark.parametrize("call", CATALOG_CALLS.values(), ids=CATALOG_CALLS.keys())
async def test_catalog_refuses_a_sku_with_a_nul_as_an_invalid_argument(
    channels: Channels, call: Callable[[CatalogServiceStub], Awaitable[Any]]
) -> None:
    assert await status_of(call(CatalogServiceStub(channels.get("catalog")))) == (
        Status.INVALID_ARGUMENT
    )


async def test_orders_refuses_a_customer_id_with_a_nul_as_an_invalid_argument(
    channels: Channels,
) -> None:
    orders = OrdersServiceStub(channels.get("orders"))
    assert await status_of(orders.list_orders(ListOrdersRequest(customer_id=NUL))) == (
        Status.INVALID_ARGUMENT
    )


AUDIT_CALLS: dict[str, Callable[[AuditServiceStub], Awaitable[Any]]] = {
    "query-aggregate-type": lambda a: a.query_events(
        QueryEventsRequest(aggregate=AggregateRef(aggregate_type=NUL, aggregate_id="a-1"))
    ),
    "query-aggregate-id": lambda a: a.query_events(
        QueryEventsRequest(aggregate=AggregateRef(aggregate_type="order", aggregate_id=NUL))
    ),
    "query-workflow-id": lambda a: a.query_events(QueryEventsRequest(workflow_id=NUL)),
    "export-order": lambda a: a.export_order(ExportOrderRequest(order_id=NUL)),
    "export-aggregate": lambda a: a.export_aggregate(
        ExportAggregateRequest(aggregate=AggregateRef(aggregate_type="order", aggregate_id=NUL))
    ),
}


@pytest.mark.parametrize("call", AUDIT_CALLS.values(), ids=AUDIT_CALLS.keys())
async def test_audit_refuses_a_selector_with_a_nul_as_an_invalid_argument(
    channels: Channels, call: Callable[[AuditServiceStub], Awaitable[Any]]
) -> None:
    assert await status_of(call(AuditServiceStub(channels.get("audit")))) == (
        Status.INVALID_ARGUMENT
    )
