"""POST /v1/orders when the saga's run closes before its `accept` update answers: the
gateway's route against the Temporal dev server and the real OrderWorkflow,
its catalog and the orders service stood in for."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.orders import PricedOrder, PriceInput
from agora.config import Settings
from agora.temporal import workflow_runner
from contracts.agora.orders.v1 import GetOrderRequest, GetOrderResponse
from gateway.context import DEADLINE, PRINCIPAL, TIMING, ServerTiming
from gateway.deps import GATEWAY
from gateway.metrics import GatewayMetrics
from gateway.problems import Problem
from gateway.routes import orders as routes
from gateway.schemas_orders import OrderLineRequest, PaymentRequest, PlaceOrderRequest
from gateway.tokens import Principal
from gateway.upstream import Upstream
from stack.temporal import temporal_cli
from workflows.orders import TASK_QUEUE, OrderWorkflow, order_id_for, order_workflow_id

CUSTOMER = "cust-1"
BODY = PlaceOrderRequest(
    lines=[OrderLineRequest(sku="SKU-1", quantity=1)],
    currency="EUR",
    payment=PaymentRequest(card_token="tok_test"),
)
pricing: asyncio.Event = asyncio.Event()


pricings: asyncio.Queue[str] = asyncio.Queue()


@activity.defn(name="orders.price")
async def catalog_silent(data: PriceInput) -> PricedOrder:
    """Catalog does not answer: the price step waits until it is cancelled."""
    pricing.set()
    pricings.put_nowait(activity.info().workflow_run_id)
    await asyncio.Event().wait()
    raise AssertionError("never answered")


class OrdersNeverRecorded:
    """The orders service for an order no saga recorded: NOT_FOUND, as it answers."""

    async def get_order(self, call: GetOrderRequest, **_: object) -> GetOrderResponse:
        raise GRPCError(Status.NOT_FOUND, f"no order {call.order_id}")


@pytest.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """The dev server, as the platform runs: the time-skipping server answers a second
    Update-With-Start on a closed run without the details that name the run."""
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), ui=False
    )
    yield environment
    await environment.shutdown()


@pytest.fixture
async def temporal(dev_server: WorkflowEnvironment) -> AsyncIterator[WorkflowEnvironment]:
    """Temporal, with an orders worker on the gateway's task queue whose catalog is silent."""
    global pricing, pricings
    pricing, pricings = asyncio.Event(), asyncio.Queue()
    async with Worker(
        dev_server.client,
        task_queue=TASK_QUEUE,
        workflows=[OrderWorkflow],
        workflow_runner=workflow_runner(),
        activities=[catalog_silent],
    ):
        yield dev_server


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


async def test_a_post_whose_saga_is_reset_while_pricing_joins_the_new_run(
    settings: Settings, temporal: WorkflowEnvironment
) -> None:
    # A reset closes the run the POST's `accept` was sent to, before it answered, and
    # starts a new one that will price, reserve and charge the order. The POST is sent
    # once more and joins the new run; before, it was answered 409 ("no longer
    # running"), and a client placing the order again under a new key paid twice. Here
    # the new run is cancelled too, so the POST ends 503: send it again.
    client = temporal.client
    key = f"key-{uuid.uuid4()}"
    posting = asyncio.create_task(routes.place_order(post_request(settings, temporal, key), BODY))
    first_run = await asyncio.wait_for(pricings.get(), timeout=30)
    handle = client.get_workflow_handle(order_workflow_id(order_id_for(CUSTOMER, key)))
    await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=handle.id, run_id=first_run),
            reason="test: reset while pricing",
            workflow_task_finish_event_id=await first_task_started(handle),
            request_id=str(uuid.uuid4()),
        )
    )
    await asyncio.wait_for(priced_by_another_run(first_run), timeout=30)
    await handle.cancel()
    with pytest.raises(Problem) as refused:
        await posting
    assert (refused.value.code, refused.value.detail) == (
        "upstream-unavailable",
        routes.RESTARTED_TWICE,
    )


async def priced_by_another_run(run_id: str) -> None:
    while await pricings.get() == run_id:
        pass


async def first_task_started(handle: WorkflowHandle[Any, Any]) -> int:
    """The pricing runs inside the first workflow task (a local activity): the task has
    started and not completed."""
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            return event.event_id
    raise AssertionError("the run started no workflow task")
