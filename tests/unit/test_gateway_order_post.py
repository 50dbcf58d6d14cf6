"""POST /v1/orders when the saga's run closes before its `accept` update answers: the
gateway's route against the time-skipping Temporal server and the real OrderWorkflow,
its catalog and the orders service stood in for."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.orders import PricedOrder, PriceInput
from agora.config import Settings
from contracts.agora.orders.v1 import GetOrderRequest, GetOrderResponse
from gateway.context import DEADLINE, PRINCIPAL, TIMING, ServerTiming
from gateway.deps import GATEWAY
from gateway.metrics import GatewayMetrics
from gateway.problems import Problem
from gateway.routes import orders as routes
from gateway.schemas_orders import OrderLineRequest, PaymentRequest, PlaceOrderRequest
from gateway.tokens import Principal
from gateway.upstream import Upstream
from workflows.orders import TASK_QUEUE, OrderWorkflow, order_id_for, order_workflow_id

CUSTOMER = "cust-1"
BODY = PlaceOrderRequest(
    lines=[OrderLineRequest(sku="SKU-1", quantity=1)],
    currency="EUR",
    payment=PaymentRequest(card_token="tok_test"),
)
pricing: asyncio.Event = asyncio.Event()


@activity.defn(name="orders.price")
async def catalog_silent(data: PriceInput) -> PricedOrder:
    """Catalog does not answer: the price step waits until it is cancelled."""
    pricing.set()
    await asyncio.Event().wait()
    raise AssertionError("never answered")


class OrdersNeverRecorded:
    """The orders service for an order no saga recorded: NOT_FOUND, as it answers."""

    async def get_order(self, call: GetOrderRequest, **_: object) -> GetOrderResponse:
        raise GRPCError(Status.NOT_FOUND, f"no order {call.order_id}")


@pytest.fixture
async def temporal(env: WorkflowEnvironment) -> AsyncIterator[WorkflowEnvironment]:
    """Temporal, with an orders worker on the gateway's task queue whose catalog is silent."""
    global pricing
    pricing = asyncio.Event()
    async with Worker(
        env.client, task_queue=TASK_QUEUE, workflows=[OrderWorkflow], activities=[catalog_silent]
    ):
        yield env


def post_request(settings: Settings, env: WorkflowEnvironment, key: str) -> web.Request:
    upstream = Upstream(SimpleNamespace(get=lambda _: None), env.client, GatewayMetrics())  # type: ignore[arg-type]
    upstream.orders = OrdersNeverRecorded()  # type: ignore[assignment]
    app = web.Application()
    app[GATEWAY] = SimpleNamespace(settings=settings, upstream=upstream)  # type: ignore[assignment,misc]
    request = make_mocked_request("POST", "/v1/orders", headers={"Idempotency-Key": key}, app=app)
    request[PRINCIPAL] = Principal(CUSTOMER, "account", frozenset(), "jti", "sid", 0, "kid")
    request[TIMING] = ServerTiming()
    request[DEADLINE] = time.monotonic() + 60
    return request


async def test_a_post_whose_saga_is_cancelled_in_temporal_while_pricing_is_refused_not_502(
    settings: Settings, temporal: WorkflowEnvironment
) -> None:
    # The run ends cancelled with `accept` unanswered: the update fails with Temporal's
    # AcceptedUpdateCompletedWorkflow, which was answered 502. Now the POST is answered
    # as its retry is: from the orders database, which holds nothing (422, place again).
    key = f"key-{uuid.uuid4()}"
    posting = asyncio.create_task(routes.place_order(post_request(settings, temporal, key), BODY))
    await asyncio.wait_for(pricing.wait(), timeout=30)
    order_id = order_id_for(CUSTOMER, key)
    await temporal.client.get_workflow_handle(order_workflow_id(order_id)).cancel()
    with pytest.raises(Problem) as refused:
        await posting
    assert (refused.value.code, refused.value.detail) == ("order-rejected", routes.NEVER_PLACED)
