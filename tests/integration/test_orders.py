"""The order saga end to end: through the gateway, on the real stack, with real services.

identity (tokens), catalog (prices), inventory (stock), payments (the simulated
PSP and the ledger) and orders (the saga) run as processes; the gateway is the
client's only door. Each test checks what a customer sees and what the stores
hold afterwards: one charge, one stock movement, a balanced ledger.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from activities.orders import (
    OrderLineInput,
    OrdersActivities,
    PricedLine,
    PricedOrder,
    PriceInput,
    RecordOrderInput,
    TransitionInput,
)
from agora import keyset
from agora.config import Settings
from agora.grpc import Channels
from agora.money import MAX_AMOUNT_MINOR
from contracts.agora.catalog.v1 import CatalogServiceStub
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.orders.v1 import OrderCancelled, OrderStatus
from contracts.agora.payments.v1 import LedgerBalanceRequest, PaymentsServiceStub
from tests.integration.catalogkit import CatalogApi
from tests.integration.consumerkit import outbox_events
from tests.integration.gatewaykit import (
    TokenMinter,
    bearer,
    no_upstream_call,
    problem,
    running_gateway,
)
from tests.integration.holds import Hold, started_attempt
from tests.integration.waiting import eventually
from workers.orders.model import OrderInput, order_id_for, order_workflow_id
from workers.payments.model import payment_id_for
from workers.payments.psp_sim import tokenize

pytestmark = pytest.mark.integration

SERVICES = ("identity", "catalog", "inventory", "payments", "orders")
OK_CARD = "4242424242424242"
DECLINED_CARD = "4000000000009995"
ACTION_CARD = "4000000000003220"  # 3-D-Secure-like: the customer must act first


def card(number: str = OK_CARD) -> str:
    """What the shop's page gets from the PSP's tokenization: never the number itself."""
    return tokenize(number, 12, 2030).token


@pytest.fixture(scope="module")
async def shop(settings: Settings, services) -> AsyncIterator[dict[str, Any]]:
    for service in SERVICES:
        services(service)
    minter = TokenMinter(settings)
    # A hundred POSTs at once through an in-process gateway on two cores lag its event
    # loop past the 500 ms it gives Redis (a 503, which a client retries): these tests
    # are about the saga; Redis being slow or away is test_gateway_admission's.
    patient = dataclasses.replace(settings, gateway_redis_timeout_ms=5000)
    async with running_gateway(patient, minter) as (gw, client):
        yield {"gw": gw, "client": client, "minter": minter, "catalog": CatalogApi(client, minter)}


def customer_with_id(shop: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """A new customer: its id (the token's subject) and its credentials."""
    customer_id = str(uuid.uuid4())
    token = shop["minter"].token(
        sub=customer_id, scope="profile catalog:read orders:read orders:write"
    )
    return customer_id, bearer(token)


def keyed_order(shop: dict[str, Any], prefix: str) -> tuple[dict[str, str], str, str]:
    """A new customer's credentials, an Idempotency-Key, and the id of the order that
    key will place."""
    customer_id, who = customer_with_id(shop)
    key = f"{prefix}-{uuid.uuid4()}"
    return who, key, order_id_for(customer_id, key)


def customer(shop: dict[str, Any]) -> dict[str, str]:
    return customer_with_id(shop)[1]


async def product_with_stock(shop: dict[str, Any], units: int, price: int = 1500) -> str:
    sku = f"ORD-{uuid.uuid4().hex[:10]}"
    await shop["catalog"].create(sku=sku, price={"amount_minor": price, "currency": "EUR"})
    admin = bearer(shop["minter"].token(scope="profile inventory:write catalog:read"))
    response = await shop["client"].post(
        f"/v1/admin/inventory/{sku}/restock", json={"quantity": units}, headers=admin
    )
    assert response.status == 200, await response.text()
    return sku


async def place(
    shop: dict[str, Any],
    who: dict[str, str],
    sku: str,
    quantity: int = 1,
    *,
    key: str | None = None,
    card_token: str | None = None,
    expected_total_minor: int | None = None,
) -> Any:
    shown = {} if expected_total_minor is None else {"expected_total_minor": expected_total_minor}
    return await shop["client"].post(
        "/v1/orders",
        json={
            "lines": [{"sku": sku, "quantity": quantity}],
            "currency": "EUR",
            "payment": {"card_token": card_token or card()},
            **shown,
        },
        # A write's answer waits for the saga to price the order; on a loaded two-core
        # machine running the whole platform that can take longer than the 2 s default.
        headers={
            **who,
            "Idempotency-Key": key or f"key-{uuid.uuid4()}",
            "X-Request-Timeout": "30000",
        },
    )


async def final_order(shop: dict[str, Any], who: dict[str, str], order_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        response = await shop["client"].get(f"/v1/orders/{order_id}", headers=who)
        if response.status != 200:
            return None
        body = await response.json()
        return body if body["status"] in ("COMPLETED", "REJECTED", "CANCELLED") else None

    return await eventually(done, within=90, what=f"order {order_id} to finish")


async def stock(shop: dict[str, Any], sku: str) -> dict[str, Any]:
    response = await shop["client"].get(f"/v1/inventory/{sku}", headers=customer(shop))
    assert response.status == 200, await response.text()
    return await response.json()


async def ledger(settings: Settings) -> Any:
    channels = Channels(settings, caller="gateway")
    try:
        return await PaymentsServiceStub(channels.get("payments")).ledger_balance(
            LedgerBalanceRequest(), timeout=10
        )
    finally:
        channels.close()


async def captures_for(settings: Settings, order_id: str) -> int:
    """Capture movements booked for the order: one order, one charge."""
    conn = await asyncpg.connect(settings.db_dsn("payments"))
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM payment_operations o JOIN payment_intents i USING (payment_id)"
            " WHERE i.order_id = $1 AND o.operation = 'capture' AND o.outcome = 'ok'",
            order_id,
        )
    finally:
        await conn.close()


async def order_events(settings: Settings, order_id: str, expected: int) -> list[EventEnvelope]:
    consumer = AIOKafkaConsumer(
        "orders.events",
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"test-{uuid.uuid4()}",
    )
    await consumer.start()
    found: list[EventEnvelope] = []
    try:
        for _ in range(60):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    envelope = EventEnvelope.parse(record.value)
                    if envelope.aggregate_id == order_id:
                        found.append(envelope)
            if len(found) >= expected:
                break
    finally:
        await consumer.stop()
    return found


async def test_an_order_is_placed_confirmed_and_captured_with_its_events_in_order(
    settings: Settings, shop: dict[str, Any]
) -> None:
    sku = await product_with_stock(shop, 5, price=1500)
    who = customer(shop)
    response = await place(shop, who, sku, quantity=2)
    assert response.status == 201, await response.text()
    accepted = await response.json()
    assert accepted["total_minor"] == 3000
    assert accepted["lines"][0]["unit_price_minor"] == 1500
    assert response.headers["Location"] == f"/v1/orders/{accepted['order_id']}"
    assert "/workflows/order-" in accepted["links"]["workflow"]

    order = await final_order(shop, who, accepted["order_id"])
    assert order["status"] == "COMPLETED", order
    assert [h["status"] for h in order["status_history"]] == ["PENDING", "CONFIRMED", "COMPLETED"]
    level = await stock(shop, sku)
    assert (level["on_hand"], level["reserved"]) == (3, 0), "stock decremented exactly once"
    balance = await ledger(settings)
    assert balance.balanced, list(balance.problems)

    events = await order_events(settings, accepted["order_id"], 3)
    assert [e.event_type for e in events] == [
        "orders.OrderPlaced",
        "orders.OrderConfirmed",
        "orders.OrderCompleted",
    ]
    assert [e.sequence for e in events] == [1, 2, 3]
    assert all(e.workflow_id == f"order-{accepted['order_id']}" for e in events)


async def test_a_retried_post_with_the_same_key_is_the_same_order_charged_once(
    settings: Settings, shop: dict[str, Any]
) -> None:
    sku = await product_with_stock(shop, 5)
    who = customer(shop)
    key = f"retry-{uuid.uuid4()}"
    first_response = await place(shop, who, sku, key=key)
    assert first_response.status == 201, await first_response.text()
    first = await first_response.json()
    second_response = await place(shop, who, sku, key=key)
    assert second_response.status == 201, await second_response.text()
    second = await second_response.json()
    assert first["order_id"] == second["order_id"]
    order = await final_order(shop, who, first["order_id"])
    assert order["status"] == "COMPLETED", order
    assert await captures_for(settings, first["order_id"]) == 1, "one order, one charge"
    level = await stock(shop, sku)
    assert level["on_hand"] == 4, "one order, one unit"
    listed = await (await shop["client"].get("/v1/orders", headers=who)).json()
    assert [o["order_id"] for o in listed["orders"]] == [first["order_id"]]


async def test_a_post_retried_after_the_saga_ended_answers_that_order_and_runs_nothing(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # The retry comes after the order completed and its price changed: it must not
    # start a second saga (which would price anew, fail to authorize the new amount
    # and mark the paid order REJECTED).
    sku = await product_with_stock(shop, 5, price=1500)
    who = customer(shop)
    key = f"late-{uuid.uuid4()}"
    first = await (await place(shop, who, sku, key=key)).json()
    await final_order(shop, who, first["order_id"])
    await shop["catalog"].set_price(sku, 1700)
    retried = await place(shop, who, sku, key=key)
    assert retried.status == 201, await retried.text()
    body = await retried.json()
    assert (body["order_id"], body["status"], body["total_minor"]) == (
        first["order_id"],
        "COMPLETED",
        1500,
    )
    order = await (await shop["client"].get(f"/v1/orders/{first['order_id']}", headers=who)).json()
    assert order["status"] == "COMPLETED"
    assert [h["status"] for h in order["status_history"]].count("REJECTED") == 0
    assert await captures_for(settings, first["order_id"]) == 1
    assert (await stock(shop, sku))["on_hand"] == 4


async def test_a_key_reused_for_a_different_order_is_refused_not_answered_with_the_first(
    settings: Settings, shop: dict[str, Any]
) -> None:
    temporal: Client = shop["gw"].upstream.temporal
    sku = await product_with_stock(shop, 5)
    who, key, order_id = keyed_order(shop, "reuse")
    # While the saga runs (held at its reserve, the POST joins the running workflow,
    # whose `accept` validator refuses it) ...
    reserve = await hold_before_placing(settings, "inventory.reserve", order_id)
    try:
        first = await (await place(shop, who, sku, quantity=1, key=key)).json()
        assert first["order_id"] == order_id
        await step_in_flight(temporal, order_id, "inventory.reserve", reserve)
        await problem(await place(shop, who, sku, quantity=2, key=key), 409, "conflict")
        # Refused by the running saga: it still waits at its reserve.
        assert await reserve.blocked() > 0
        described = await temporal.get_workflow_handle(order_workflow_id(order_id)).describe()
        assert described.status == WorkflowExecutionStatus.RUNNING
    finally:
        await reserve.release()
    await final_order(shop, who, order_id)
    # ... and after it has closed (it reads how it ended).
    await problem(await place(shop, who, sku, quantity=2, key=key), 409, "conflict")
    same = await place(shop, who, sku, quantity=1, key=key)
    assert same.status == 201, await same.text()
    assert (await same.json())["order_id"] == first["order_id"]
    assert (await stock(shop, sku))["on_hand"] == 4
    assert await captures_for(settings, first["order_id"]) == 1


async def test_a_post_refused_at_pricing_is_refused_the_same_way_when_retried(
    shop: dict[str, Any],
) -> None:
    who = customer(shop)
    key = f"refused-{uuid.uuid4()}"
    unknown = f"ORD-NONE-{uuid.uuid4().hex[:8]}"
    first = await place(shop, who, unknown, key=key)
    await problem(first, 422, "order-rejected")
    again = await place(shop, who, unknown, key=key)
    await problem(again, 422, "order-rejected")
    # The key with another order is a conflict, not the first order's rejection.
    sku = await product_with_stock(shop, 5)
    await problem(await place(shop, who, sku, key=key), 409, "conflict")


@pytest.mark.parametrize("shown", [None, 1500])
async def test_a_post_retried_after_a_cancel_in_temporal_answers_the_cancelled_order(
    shop: dict[str, Any], shown: int | None
) -> None:
    # Staff cancelled the saga in the Temporal UI while it waited for the customer's
    # payment step: the run ends Canceled, with no result to answer a retry with (it
    # was answered 502). The order as it ended is in the orders database, which does
    # not hold the total the POST said was shown: the retry's own is taken.
    temporal: Client = shop["gw"].upstream.temporal
    sku = await product_with_stock(shop, 2)
    who, key, order_id = keyed_order(shop, "temporal-cancel")
    first = await place(
        shop, who, sku, key=key, card_token=card(ACTION_CARD), expected_total_minor=shown
    )
    assert first.status == 201, await first.text()

    async def waiting() -> bool:
        order = await (await shop["client"].get(f"/v1/orders/{order_id}", headers=who)).json()
        return bool(order["status"] == "AWAITING_PAYMENT")

    await eventually(waiting, within=90, what="the order to await the customer")
    handle = temporal.get_workflow_handle(order_workflow_id(order_id))
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    retried = await place(
        shop, who, sku, key=key, card_token=card(ACTION_CARD), expected_total_minor=shown
    )
    assert retried.status == 201, await retried.text()
    body = await retried.json()
    assert (body["order_id"], body["status"], body["refunded_minor"]) == (order_id, "CANCELLED", 0)
    assert retried.headers["Location"] == f"/v1/orders/{order_id}"
    # The key with another order is still a conflict, not this order.
    await problem(await place(shop, who, sku, quantity=2, key=key), 409, "conflict")
    assert (await stock(shop, sku))["reserved"] == 0


async def test_a_post_whose_saga_was_stopped_before_it_placed_the_order_is_refused_clearly(
    shop: dict[str, Any],
) -> None:
    # The run was terminated before it recorded the order (here: before any worker
    # took it): nothing was reserved or charged, and nothing tells how it ended.
    temporal: Client = shop["gw"].upstream.temporal
    sku = await product_with_stock(shop, 2)
    customer_id, who = customer_with_id(shop)
    key = f"stopped-{uuid.uuid4()}"
    order_id = order_id_for(customer_id, key)
    handle = await temporal.start_workflow(
        "Order",
        OrderInput(order_id, customer_id, key, [OrderLineInput(sku, 1)], "EUR", card()),
        id=order_workflow_id(order_id),
        # No worker polls it. One name, not one per run: the gateway's client reports
        # its calls by task queue, and a metric label must not carry an id.
        task_queue="agora-nobody",
    )
    await handle.terminate("stopped by staff")
    body = await problem(await place(shop, who, sku, key=key), 422, "order-rejected")
    assert "new Idempotency-Key" in body["detail"], body


async def test_a_post_retried_once_temporal_forgot_the_first_run_answers_the_recorded_order(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # Past the namespace's retention Temporal no longer holds the first run (deleted
    # here, as retention does): the retry starts a second saga, which refuses to
    # place the order again. The POST is answered the order as it ended, as a retry
    # of a closed run is (it was answered 201 PENDING, the next retry 409).
    temporal: Client = shop["gw"].upstream.temporal
    sku = await product_with_stock(shop, 2)
    who, key, order_id = keyed_order(shop, "forgotten")
    assert (await place(shop, who, sku, key=key)).status == 201
    assert (await final_order(shop, who, order_id))["status"] == "COMPLETED"
    await temporal.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=temporal.namespace,
            workflow_execution=WorkflowExecution(workflow_id=order_workflow_id(order_id)),
        )
    )

    async def forgotten() -> bool:
        try:
            await temporal.get_workflow_handle(order_workflow_id(order_id)).describe()
        except RPCError as error:
            return error.status == RPCStatusCode.NOT_FOUND
        return False

    await eventually(forgotten, within=60, what="Temporal to delete the first run")
    for _ in range(2):  # the second saga, then its closed run, answer alike
        retried = await place(shop, who, sku, key=key)
        assert retried.status == 201, await retried.text()
        body = await retried.json()
        assert (body["order_id"], body["status"]) == (order_id, "COMPLETED")
    await problem(await place(shop, who, sku, quantity=2, key=key), 409, "conflict")
    assert await captures_for(settings, order_id) == 1
    assert (await stock(shop, sku))["on_hand"] == 1


async def test_a_customer_never_sees_or_touches_another_customers_order(
    settings: Settings, shop: dict[str, Any]
) -> None:
    sku = await product_with_stock(shop, 2)
    owner, stranger = customer(shop), customer(shop)
    order_id = (await (await place(shop, owner, sku)).json())["order_id"]

    async def strangers_cancel() -> None:
        await problem(
            await shop["client"].post(f"/v1/orders/{order_id}/cancel", json={}, headers=stranger),
            404,
            "not-found",
        )

    await problem(
        await shop["client"].get(f"/v1/orders/{order_id}", headers=stranger), 404, "not-found"
    )
    await strangers_cancel()  # while the saga runs
    listed = await (await shop["client"].get("/v1/orders", headers=stranger)).json()
    assert listed["orders"] == []
    # The owner's order went on as if nobody had asked ...
    order = await final_order(shop, owner, order_id)
    assert [h["status"] for h in order["status_history"]] == ["PENDING", "CONFIRMED", "COMPLETED"]
    assert order["refunded_minor"] == 0
    # ... and a stranger's cancel of the completed order changes nothing either.
    await strangers_cancel()
    after = await (await shop["client"].get(f"/v1/orders/{order_id}", headers=owner)).json()
    assert after == order
    assert await captures_for(settings, order_id) == 1
    assert (await stock(shop, sku))["on_hand"] == 1


async def test_an_admin_reads_and_refunds_a_customers_order_another_customer_cannot(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # Staff act for customers (docs/gateway.md): an admin's token reads, refunds and
    # cancels any order; a customer's token still gets 404 for another's order.
    sku = await product_with_stock(shop, 2, price=1000)
    owner, stranger = customer(shop), customer(shop)
    admin = bearer(
        shop["minter"].token(
            sub=str(uuid.uuid4()), scope="profile catalog:read orders:read orders:write admin"
        )
    )
    order_id = (await (await place(shop, owner, sku)).json())["order_id"]
    assert (await final_order(shop, owner, order_id))["status"] == "COMPLETED"
    path = f"/v1/orders/{order_id}"
    read = await shop["client"].get(path, headers=admin)
    assert read.status == 200, await read.text()
    assert (await read.json())["order_id"] == order_id
    for action, body, extra in (
        ("cancel", {"reason": "not mine"}, {}),
        ("refunds", {"amount_minor": 1}, {"Idempotency-Key": f"stranger-{uuid.uuid4()}"}),
    ):
        refused = await shop["client"].post(f"{path}/{action}", json=body, headers=stranger | extra)
        await problem(refused, 404, "not-found")
    # A refund without its key is refused as input, before the order is looked up.
    calls = dict(shop["gw"].upstream.calls)
    keyless = await shop["client"].post(
        f"{path}/refunds", json={"amount_minor": 1}, headers=stranger
    )
    await problem(keyless, 400, "invalid-argument")
    assert shop["gw"].upstream.calls == calls, "nothing called for a refund without a key"
    refund = await shop["client"].post(
        f"{path}/refunds",
        json={"amount_minor": 100, "reason": "goodwill"},
        headers=admin | {"Idempotency-Key": f"admin-{uuid.uuid4()}"},
    )
    assert refund.status == 200, await refund.text()
    assert (await refund.json())["refunded_minor"] == 100
    cancel = await shop["client"].post(f"{path}/cancel", json={"reason": "staff"}, headers=admin)
    assert cancel.status == 200, await cancel.text()
    after = await (await shop["client"].get(path, headers=owner)).json()
    assert (after["status"], after["refunded_minor"]) == ("CANCELLED", 1000)
    assert await captures_for(settings, order_id) == 1
    assert (await stock(shop, sku))["on_hand"] == 2, "the cancel returned the unit"
    assert (await ledger(settings)).balanced


async def test_an_idempotency_key_is_the_customers_own_so_another_using_it_places_another_order(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # Two customers' clients happen to send the same key with the same body (keys are
    # only unique per client): two orders, two charges, each customer sees their own.
    sku = await product_with_stock(shop, 4)
    (first_id, first), (second_id, second) = customer_with_id(shop), customer_with_id(shop)
    key = f"shared-{uuid.uuid4()}"
    token = card()  # the very same body
    responses = [await place(shop, who, sku, key=key, card_token=token) for who in (first, second)]
    for response in responses:
        assert response.status == 201, await response.text()
    orders = [(await response.json())["order_id"] for response in responses]
    assert orders == [order_id_for(first_id, key), order_id_for(second_id, key)]
    assert orders[0] != orders[1]
    for who, order_id in zip((first, second), orders, strict=True):
        assert (await final_order(shop, who, order_id))["status"] == "COMPLETED"
        assert await captures_for(settings, order_id) == 1, "each order charged once"
    for who, own, other in ((first, *orders), (second, *reversed(orders))):
        listed = await (await shop["client"].get("/v1/orders", headers=who)).json()
        assert [o["order_id"] for o in listed["orders"]] == [own]
        await problem(
            await shop["client"].get(f"/v1/orders/{other}", headers=who), 404, "not-found"
        )
    level = await stock(shop, sku)
    assert (level["on_hand"], level["reserved"]) == (2, 0), "two orders, two units"


async def test_a_customers_orders_are_listed_newest_first_in_keyset_pages(
    shop: dict[str, Any],
) -> None:
    sku = await product_with_stock(shop, 5)
    who = customer(shop)
    placed: list[str] = []
    for _ in range(5):
        response = await place(shop, who, sku)
        assert response.status == 201, await response.text()
        order_id = (await response.json())["order_id"]

        async def recorded(order_id: str = order_id) -> bool:
            got = await shop["client"].get(f"/v1/orders/{order_id}", headers=who)
            return got.status == 200

        # Listed by when the order was recorded: the next one is placed after that.
        await eventually(recorded, within=30, what=f"order {order_id} to be recorded")
        placed.append(order_id)

    async def page(**params: Any) -> dict[str, Any]:
        response = await shop["client"].get("/v1/orders", params=params, headers=who)
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body

    pages, cursor = [], ""
    while True:
        body = await page(limit=2, **({"cursor": cursor} if cursor else {}))
        pages.append([o["order_id"] for o in body["orders"]])
        cursor = body.get("next_cursor", "")
        if not cursor:
            break
        assert len(pages) < 5, f"paging does not end: {pages}"
    assert pages == [placed[4:2:-1], placed[2:0:-1], placed[:1]], "newest first, each once"
    # A page that holds all that is left ends the list: no cursor to an empty page.
    whole = await page(limit=5)
    assert [o["order_id"] for o in whole["orders"]] == placed[::-1]
    assert not whole.get("next_cursor"), whole
    # A cursor is a position in the caller's own list: one made up lists nothing else.
    made_up = keyset.encode(dt.datetime.now(dt.UTC) + dt.timedelta(days=1), uuid.uuid4())
    assert [o["order_id"] for o in (await page(cursor=made_up))["orders"]] == placed[::-1]
    first_cursor = (await page(limit=2))["next_cursor"]
    for garbled in (
        "not a cursor",
        first_cursor[: len(first_cursor) // 2],  # cut short
        keyset.encode(dt.datetime.now(dt.UTC), uuid.uuid4()).swapcase(),
        base64.urlsafe_b64encode(b'["yesterday", "not-a-uuid"]').decode(),
        base64.urlsafe_b64encode(
            b'["2026-01-01T00:00:00", "%s"]' % str(uuid.uuid4()).encode()
        ).decode(),  # a time without its offset
    ):
        await problem(
            await shop["client"].get("/v1/orders", params={"cursor": garbled}, headers=who),
            400,
            "invalid-argument",
        )


async def test_a_declined_card_rejects_the_order_and_returns_the_stock(
    settings: Settings, shop: dict[str, Any]
) -> None:
    sku = await product_with_stock(shop, 3)
    who = customer(shop)
    key = f"declined-{uuid.uuid4()}"
    accepted = await (await place(shop, who, sku, key=key, card_token=card(DECLINED_CARD))).json()
    order = await final_order(shop, who, accepted["order_id"])
    assert order["status"] == "REJECTED"
    # Its reason, as the order's GET, its list and a retried POST tell it.
    assert "insufficient funds" in order["reason"], order
    assert order["reason"] == order["status_history"][-1]["reason"]
    listed = await (await shop["client"].get("/v1/orders", headers=who)).json()
    assert [o["reason"] for o in listed["orders"]] == [order["reason"]]
    retried = await place(shop, who, sku, key=key, card_token=card(DECLINED_CARD))
    assert (await retried.json())["reason"] == order["reason"]
    level = await stock(shop, sku)
    assert (level["on_hand"], level["reserved"]) == (3, 0)
    assert (await ledger(settings)).balanced


async def test_a_post_retried_after_its_order_was_cancelled_answers_the_order_as_it_is(
    shop: dict[str, Any],
) -> None:
    # The closed saga's result is frozen at COMPLETED; the cancel after it ran in another
    # workflow. The retried POST answered COMPLETED, nothing refunded, while GET said
    # CANCELLED.
    sku = await product_with_stock(shop, 3)
    who = customer(shop)
    key = f"replayed-{uuid.uuid4()}"
    accepted = await (await place(shop, who, sku, key=key)).json()
    assert (await final_order(shop, who, accepted["order_id"]))["status"] == "COMPLETED"
    await cancel(shop, who, accepted["order_id"])
    shown = await (
        await shop["client"].get(f"/v1/orders/{accepted['order_id']}", headers=who)
    ).json()
    assert shown["status"] == "CANCELLED"
    retried = await place(shop, who, sku, key=key)
    assert retried.status in (200, 201), await retried.text()
    answer = await retried.json()
    assert answer["order_id"] == accepted["order_id"]
    assert (answer["status"], answer["refunded_minor"]) == ("CANCELLED", shown["refunded_minor"])
    assert answer["refunded_minor"] == answer["total_minor"] > 0


async def test_a_made_up_card_token_is_the_customers_decline_and_returns_the_stock(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # Only the PSP knows its tokens: the POST is accepted, payments refuses the token,
    # and the order ends as the customer's decline (not PAYMENT_FAILED, which pages).
    sku = await product_with_stock(shop, 3)
    who = customer(shop)
    token = f"tok_made_up_{uuid.uuid4().hex[:12]}"
    placed = await place(shop, who, sku, key=f"made-up-{uuid.uuid4()}", card_token=token)
    assert placed.status == 201, await placed.text()
    order = await final_order(shop, who, (await placed.json())["order_id"])
    assert order["status"] == "REJECTED", order
    assert order["reason"] == "card_token is not a card token of the PSP"
    temporal: Client = shop["gw"].upstream.temporal
    saga = temporal.get_workflow_handle(order_workflow_id(order["order_id"]))
    attributes = {key.name: value for key, value in (await saga.describe()).typed_search_attributes}
    assert attributes["PaymentOutcome"] == "declined"
    assert token not in json.dumps(order)
    level = await stock(shop, sku)
    assert (level["on_hand"], level["reserved"]) == (3, 0)
    assert (await ledger(settings)).balanced


async def test_an_unknown_product_is_rejected_at_once_and_nothing_happens(
    settings: Settings, shop: dict[str, Any]
) -> None:
    customer_id, who = customer_with_id(shop)
    key = f"unknown-{uuid.uuid4()}"
    order_id = order_id_for(customer_id, key)
    response = await place(shop, who, f"NOPE-{uuid.uuid4().hex[:8]}", key=key)
    body = await problem(response, 422, "order-rejected")
    assert "not available" in body["detail"]
    # Refused while pricing, before the saga's first effect: no order recorded,
    # nothing reserved, nothing authorized.
    await problem(await shop["client"].get(f"/v1/orders/{order_id}", headers=who), 404, "not-found")
    listed = await (await shop["client"].get("/v1/orders", headers=who)).json()
    assert listed["orders"] == []
    assert await rows_for_order(settings, order_id) == {
        "orders": 0,
        "reservations": 0,
        "payment_intents": 0,
    }


async def captured_minor(settings: Settings, order_id: str) -> int:
    """What payments captured for the order, in all."""
    conn = await asyncpg.connect(settings.db_dsn("payments"))
    try:
        captured: int = await conn.fetchval(
            "SELECT coalesce(sum(captured_minor), 0) FROM payment_intents WHERE order_id = $1",
            order_id,
        )
        return captured
    finally:
        await conn.close()


async def test_prices_risen_since_the_cart_reject_the_order_before_anything_happens(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # The cart showed 2 x 15.00; the price doubled before the POST (beyond any
    # tolerance the platform may be set to): the POST is refused PRICE_CHANGED, naming
    # both totals, and nothing is recorded, reserved or authorized.
    sku = await product_with_stock(shop, 5, price=1500)
    await shop["catalog"].set_price(sku, 3000)
    customer_id, who = customer_with_id(shop)
    key = f"price-changed-{uuid.uuid4()}"
    order_id = order_id_for(customer_id, key)
    for _ in range(2):  # a retry with the key is answered the same
        response = await place(shop, who, sku, quantity=2, key=key, expected_total_minor=3000)
        body = await problem(response, 422, "order-rejected")
        assert body["reason"] == "PRICE_CHANGED", body
        assert "now comes to 6000, more than the 3000 you were shown" in body["detail"], body
        assert "review the order and place it again" in body["detail"], body
    assert await rows_for_order(settings, order_id) == {
        "orders": 0,
        "reservations": 0,
        "payment_intents": 0,
    }
    await problem(await shop["client"].get(f"/v1/orders/{order_id}", headers=who), 404, "not-found")
    level = await stock(shop, sku)
    assert (level["on_hand"], level["reserved"]) == (5, 0)
    # Reviewed, and placed again (a new key) at the total now shown: accepted, charged.
    again = await place(shop, who, sku, quantity=2, expected_total_minor=6000)
    assert again.status == 201, await again.text()
    placed = await again.json()
    assert (await final_order(shop, who, placed["order_id"]))["status"] == "COMPLETED"
    assert await captured_minor(settings, placed["order_id"]) == 6000


async def test_prices_fallen_since_the_cart_are_accepted_and_charged_as_priced_now(
    settings: Settings, shop: dict[str, Any]
) -> None:
    sku = await product_with_stock(shop, 5, price=1500)
    await shop["catalog"].set_price(sku, 1200)
    who = customer(shop)
    response = await place(shop, who, sku, quantity=2, expected_total_minor=3000)
    assert response.status == 201, await response.text()
    accepted = await response.json()
    assert accepted["total_minor"] == 2400
    order = await final_order(shop, who, accepted["order_id"])
    assert (order["status"], order["total_minor"]) == ("COMPLETED", 2400)
    assert await captured_minor(settings, accepted["order_id"]) == 2400


async def test_a_rise_within_the_platforms_tolerance_is_accepted_at_the_new_total(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # 15.00 shown, 20.00 now: a third more. Refused by the shop's gateway (the default
    # tolerance, 0), accepted by one set to tolerate 50 % (AGORA_ORDER_PRICE_TOLERANCE_BPS).
    sku = await product_with_stock(shop, 2, price=1500)
    await shop["catalog"].set_price(sku, 2000)
    refused = await place(shop, customer(shop), sku, expected_total_minor=1500)
    assert (await problem(refused, 422, "order-rejected"))["reason"] == "PRICE_CHANGED"
    async with running_gateway(settings, shop["minter"], order_price_tolerance_bps=5000) as (
        _,
        tolerant,
    ):
        who = customer(shop)
        response = await place({**shop, "client": tolerant}, who, sku, expected_total_minor=1500)
        assert response.status == 201, await response.text()
        accepted = await response.json()
        assert accepted["total_minor"] == 2000
        order = await final_order({**shop, "client": tolerant}, who, accepted["order_id"])
    assert order["status"] == "COMPLETED"
    assert await captured_minor(settings, accepted["order_id"]) == 2000


async def test_bad_order_requests_get_problems_and_start_nothing(shop: dict[str, Any]) -> None:
    customer_id, who = customer_with_id(shop)
    client = shop["client"]
    body = {
        "lines": [{"sku": "X-1", "quantity": 1}],
        "currency": "EUR",
        "payment": {"card_token": card()},
    }
    with no_upstream_call(shop["gw"]):
        await problem(
            await client.post("/v1/orders", json=body, headers=who), 400, "invalid-argument"
        )  # no Idempotency-Key
    key = f"key-{uuid.uuid4()}"
    headers = {**who, "Idempotency-Key": key}
    for bad in (
        {**body, "lines": []},
        {**body, "lines": [{"sku": "X-1", "quantity": 0}]},
        {**body, "currency": "euro"},
        {**body, "currency": "XXX"},  # a code catalog does not sell in
        {**body, "unexpected": True},
        # A card number where its token belongs never reaches the saga's input.
        {**body, "payment": {"card_token": "4242 4242 4242 4242"}},
        {**body, "payment": {"card_token": "4000000000000002"}},
        # The total the customer was shown is an amount payments could take.
        {**body, "expected_total_minor": -1},
        {**body, "expected_total_minor": 0},
        {**body, "expected_total_minor": MAX_AMOUNT_MINOR + 1},
        {**body, "expected_total_minor": "1500"},
    ):
        with no_upstream_call(shop["gw"]):
            await problem(
                await client.post("/v1/orders", json=bad, headers=headers),
                422,
                "validation-failed",
            )
    # No saga was started for the key: Temporal has no workflow for its order.
    handle = shop["gw"].upstream.temporal.get_workflow_handle(
        order_workflow_id(order_id_for(customer_id, key))
    )
    with pytest.raises(RPCError) as missing:
        await handle.describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND


@pytest.mark.parametrize(("price", "lines"), [(0, 1), (10**12, 11)])
async def test_a_total_payments_cannot_take_is_rejected_before_the_order_is_accepted(
    settings: Settings, shop: dict[str, Any], price: int, lines: int
) -> None:
    # A free product (total 0), or lines of 100 at catalog's highest price that add up
    # to more than 10^15: refused at pricing with the POST's answer, not accepted
    # (201) and then rejected by payments.
    skus = [await product_with_stock(shop, 100, price=price) for _ in range(lines)]
    customer_id, who = customer_with_id(shop)
    key = f"total-{uuid.uuid4()}"
    response = await shop["client"].post(
        "/v1/orders",
        json={
            "lines": [{"sku": sku, "quantity": 100} for sku in skus],
            "currency": "EUR",
            "payment": {"card_token": card()},
        },
        headers={**who, "Idempotency-Key": key, "X-Request-Timeout": "30000"},
    )
    body = await problem(response, 422, "order-rejected")
    assert f"not {price * 100 * lines}" in body["detail"]
    assert await rows_for_order(settings, order_id_for(customer_id, key)) == {
        "orders": 0,
        "reservations": 0,
        "payment_intents": 0,
    }


async def test_an_order_catalog_refuses_to_price_is_rejected_not_retried(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # A client other than the gateway (which refuses the currency itself) must not
    # leave a saga retrying its price step for good: catalog's INVALID_ARGUMENT is
    # a non-retryable InvalidOrder, which the saga turns into a rejection.
    sku = await product_with_stock(shop, 1)
    channels = Channels(settings, caller="orders")
    pool = await asyncpg.create_pool(settings.db_dsn("orders"), min_size=1, max_size=1)
    try:
        activities = OrdersActivities(pool, CatalogServiceStub(channels.get("catalog")))
        with pytest.raises(ApplicationError) as refused:
            await ActivityEnvironment().run(
                activities.price, PriceInput([OrderLineInput(sku, 1)], "XXX")
            )
        assert (refused.value.type, refused.value.non_retryable) == ("InvalidOrder", True)
        assert "XXX" in refused.value.message
    finally:
        channels.close()
        await pool.close()


async def rows_for_order(settings: Settings, order_id: str) -> dict[str, int]:
    """The rows an order's saga leaves in orders, inventory and payments."""
    counts: dict[str, int] = {}
    for database, table, column, value in (
        ("orders", "orders", "order_id", uuid.UUID(order_id)),
        ("inventory", "reservations", "reservation_id", f"order-{order_id}"),
        ("payments", "payment_intents", "order_id", order_id),
    ):
        conn = await asyncpg.connect(settings.db_dsn(database))
        try:
            counts[table] = await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE {column} = $1",
                value,
            )
        finally:
            await conn.close()
    return counts


async def money_held(settings: Settings, order_ids: list[str]) -> int:
    """What the orders' payments still hold on cards: authorized, neither captured nor released."""
    conn = await asyncpg.connect(settings.db_dsn("payments"))
    try:
        held: int = await conn.fetchval(
            "SELECT coalesce(sum(authorized_minor - captured_minor - released_minor), 0)"
            " FROM payment_intents WHERE order_id = ANY($1::text[])",
            order_ids,
        )
        return held
    finally:
        await conn.close()


async def test_concurrent_orders_against_scarce_stock_never_oversell_or_double_charge(
    settings: Settings, shop: dict[str, Any]
) -> None:
    units, orders = 10, 100
    sku = await product_with_stock(shop, units, price=700)
    customers = [customer(shop) for _ in range(orders)]
    # The test holds the product's stock row while the orders are placed: no saga can
    # get past its reservation, so once every POST is accepted all 100 sagas are in
    # flight at once, and then they race for the 10 units.
    hold = await Hold.statement(
        settings.db_dsn("inventory"), "SELECT 1 FROM stock WHERE sku = $1 FOR UPDATE", sku
    )
    try:
        responses = await asyncio.gather(*(place(shop, who, sku) for who in customers))
        for response in responses:
            assert response.status == 201, await response.text()
        placed = [
            (who, (await response.json())["order_id"])
            for who, response in zip(customers, responses, strict=True)
        ]
        assert len({order_id for _, order_id in placed}) == orders
        assert await hold.blocked() > 0, "the reservations wait for the stock row"
    finally:
        await hold.release()

    finals = await asyncio.gather(*(final_order(shop, who, oid) for who, oid in placed))
    completed = [o["order_id"] for o in finals if o["status"] == "COMPLETED"]
    rejected = [o for o in finals if o["status"] == "REJECTED"]
    assert (len(completed), len(rejected)) == (units, orders - units), [o["status"] for o in finals]
    for order in rejected:  # refused at the reservation: never confirmed, nothing paid
        assert [h["status"] for h in order["status_history"]] == ["PENDING", "REJECTED"], order
    level = await stock(shop, sku)
    assert (level["on_hand"], level["reserved"]) == (0, 0), "no oversell, nothing left held"
    balance = await ledger(settings)
    assert balance.balanced, list(balance.problems)
    assert [await captures_for(settings, oid) for oid in completed] == [1] * units
    assert [await captures_for(settings, o["order_id"]) for o in rejected] == [0] * len(rejected)
    assert await money_held(settings, [o["order_id"] for o in rejected]) == 0


# The saga's steps on other services' queues (workflows/orders.py), in the order it
# runs them, and the service process whose worker runs each.
SAGA_STEPS = {
    "inventory.reserve": "inventory",
    "payments.authorize": "payments",
    "payments.capture": "payments",
    "inventory.commit": "inventory",
}


STARTED = PendingActivityState.PENDING_ACTIVITY_STATE_STARTED


def reservation_lock(order_id: str) -> str:
    """What inventory serializes an order's reserve, release and commit on
    (workers/inventory/reservations.py `_lock`, for reservation `order-<order id>`)."""
    return f"reservation:order-{order_id}"


async def hold_before_placing(settings: Settings, step: str, order_id: str) -> Hold:
    """A hold that the order's `step` (or, for the commit, its capture) will wait for."""
    if step == "inventory.reserve":
        return await Hold.advisory(settings.db_dsn("inventory"), reservation_lock(order_id))
    if step == "payments.authorize":
        # An intent row not yet committed, with the id the first authorization creates:
        # its INSERT ... ON CONFLICT waits until the test's transaction rolls back.
        return await Hold.statement(
            settings.db_dsn("payments"),
            "INSERT INTO payment_intents (payment_id, order_id, currency, status)"
            " VALUES ($1, $2, 'EUR', 'pending')",
            uuid.UUID(payment_id_for(f"{order_id}:authorize:1")),
            order_id,
        )
    # Capture and void serialize on their idempotency key (workers/payments/intents.py).
    return await Hold.advisory(settings.db_dsn("payments"), f"payments:{order_id}:capture")


async def step_in_flight(temporal: Client, order_id: str, step: str, hold: Hold) -> None:
    """Wait until Temporal has handed `step` to a worker and its code waits for `hold`."""
    handle = temporal.get_workflow_handle(order_workflow_id(order_id))

    async def running() -> bool:
        pending = (await handle.describe()).raw_description.pending_activities
        started = any(p.activity_type.name == step and p.state == STARTED for p in pending)
        return started and await hold.blocked() > 0

    await eventually(running, within=60, what=f"{step} of order {order_id} to run and wait")


async def attempts_of(temporal: Client, order_id: str, step: str) -> int:
    """The attempt on which `step` completed (its history's ACTIVITY_TASK_STARTED)."""
    history = await temporal.get_workflow_handle(order_workflow_id(order_id)).fetch_history()
    return started_attempt(history, step)


@pytest.mark.parametrize(
    ("step", "victim"),
    [(step, worker) for step, owner in SAGA_STEPS.items() for worker in (owner, "orders")],
)
async def test_a_worker_killed_mid_saga_leaves_one_charge_and_one_stock_movement(
    settings: Settings, shop: dict[str, Any], services, step: str, victim: str
) -> None:
    # The step is held in flight by a lock of the test's (tests/integration/holds.py):
    # the worker that runs it, or the orders worker that waits for it, is SIGKILLed
    # while the step's code is running, then the lock is released and the worker
    # restarted. Temporal retries the lost attempt (or replays the saga) on the new one.
    temporal: Client = shop["gw"].upstream.temporal
    sku = await product_with_stock(shop, 4)
    who, key, order_id = keyed_order(shop, "kill")
    process = services(victim)
    hold = await hold_before_placing(settings, step, order_id)
    try:
        response = await place(shop, who, sku, quantity=2, key=key)
        assert response.status == 201, await response.text()
        assert (await response.json())["order_id"] == order_id
        if step == "inventory.commit":
            # Reserve takes the reservation's lock too: hold it only once the capture
            # (after the reserve) is running, then let the capture go on to the commit.
            await step_in_flight(temporal, order_id, "payments.capture", hold)
            capture_hold = hold
            hold = await Hold.advisory(settings.db_dsn("inventory"), reservation_lock(order_id))
            await capture_hold.release()
        await step_in_flight(temporal, order_id, step, hold)
        process.kill()  # SIGKILL while the step runs
    finally:
        await hold.release()
    services(victim)  # restarted: Temporal hands it the unfinished work

    order = await final_order(shop, who, order_id)
    assert order["status"] == "COMPLETED", order
    level = await stock(shop, sku)
    assert (level["on_hand"], level["reserved"]) == (2, 0), "one stock decrement"
    assert await captures_for(settings, order_id) == 1, "one charge"
    balance = await ledger(settings)
    assert balance.balanced, list(balance.problems)
    if victim != "orders":
        # The attempt that was running died with its worker; a later one completed.
        assert await attempts_of(temporal, order_id, step) >= 2


@pytest.mark.parametrize(
    ("status", "before"),
    [("CONFIRMED", "payments.authorize"), ("COMPLETED", "payments.capture")],
)
async def test_the_orders_worker_killed_in_its_own_transition_records_it_once(
    settings: Settings, shop: dict[str, Any], services, status: str, before: str
) -> None:
    # The orders worker's own steps are local activities: no marker is written until
    # the workflow task completes, so a worker killed in one runs it again, whole, on
    # the new worker. The transition must still be recorded once: one history row,
    # one event, and the order completes with one charge.
    temporal: Client = shop["gw"].upstream.temporal
    sku = await product_with_stock(shop, 4)
    who, key, order_id = keyed_order(shop, "kill-local")
    process = services("orders")
    step = await hold_before_placing(settings, before, order_id)
    row: Hold | None = None
    try:
        response = await place(shop, who, sku, quantity=1, key=key)
        assert response.status == 201, await response.text()
        await step_in_flight(temporal, order_id, before, step)
        # The order's row, which the transition locks first, held before the step
        # before it goes on: the transition then waits for it, in the orders worker.
        row = await Hold.statement(
            settings.db_dsn("orders"),
            "SELECT 1 FROM orders WHERE order_id = $1 FOR UPDATE",
            uuid.UUID(order_id),
        )
        await step.release()

        async def transition_waits() -> bool:
            assert row is not None
            return await row.blocked() > 0

        await eventually(transition_waits, what=f"the {status} transition to wait")
        process.kill()  # SIGKILL while the local activity runs
    finally:
        await step.release()
        if row is not None:
            await row.release()
    services("orders")  # restarted: the workflow task is retried on it

    order = await final_order(shop, who, order_id)
    assert order["status"] == "COMPLETED", order
    assert [h["status"] for h in order["status_history"]] == ["PENDING", "CONFIRMED", "COMPLETED"]
    assert await captures_for(settings, order_id) == 1, "one charge"
    pool = await asyncpg.create_pool(settings.db_dsn("orders"), min_size=1, max_size=1)
    try:
        events = await outbox_events(pool, "order", order_id)
    finally:
        await pool.close()
    assert events.count(f"Order{status.capitalize()}") == 1, events


async def test_cancels_sent_together_are_one_update_that_all_of_them_answer(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # A saga held in its reserve step; a customer's client sends the cancel 8 times
    # (double clicks, retries after timeouts). They join one cancel update (one id):
    # each used to add an update of its own, and past Temporal's 10 in flight per
    # run the next were refused.
    temporal: Client = shop["gw"].upstream.temporal
    sku = await product_with_stock(shop, 2)
    who, key, order_id = keyed_order(shop, "cancels")
    hold = await hold_before_placing(settings, "inventory.reserve", order_id)
    handle = temporal.get_workflow_handle(order_workflow_id(order_id))

    async def cancel() -> Any:
        return await shop["client"].post(
            f"/v1/orders/{order_id}/cancel",
            json={"reason": "clicked twice"},
            headers={**who, "X-Request-Timeout": "30000"},
        )

    async def accepted_updates() -> int:
        history = await handle.fetch_history()
        return sum(
            1
            for e in history.events
            if e.HasField("workflow_execution_update_accepted_event_attributes")
        )

    cancels: list[asyncio.Task[Any]] = []
    try:
        assert (await place(shop, who, sku, key=key)).status == 201
        await step_in_flight(temporal, order_id, "inventory.reserve", hold)
        sent = shop["gw"].upstream.calls["temporal.CancelOrder"]
        cancels = [asyncio.create_task(cancel()) for _ in range(8)]

        async def all_sent() -> bool:
            return shop["gw"].upstream.calls["temporal.CancelOrder"] - sent == 8

        await eventually(all_sent, within=30, what="the 8 cancels to reach Temporal")

        async def cancel_accepted() -> bool:
            return await accepted_updates() >= 2  # the POST's accept, and a cancel

        await eventually(cancel_accepted, within=30, what="the saga to accept the cancel")
    finally:
        await hold.release()
        done = await asyncio.gather(*cancels, return_exceptions=True)  # none left behind
    answers = [await response.json() for response in done]
    assert [a.get("status") for a in answers] == ["CANCELLED"] * 8, answers
    # The accept update of the POST, and one cancel.
    assert await accepted_updates() == 2
    assert (await final_order(shop, who, order_id))["status"] == "CANCELLED"
    assert (await stock(shop, sku))["reserved"] == 0


async def test_a_payment_needing_the_customer_is_shown_then_completed_once(
    settings: Settings, shop: dict[str, Any]
) -> None:
    temporal: Client = shop["gw"].upstream.temporal
    sku = await product_with_stock(shop, 2)
    who = customer(shop)
    response = await place(shop, who, sku, card_token=card(ACTION_CARD))
    assert response.status == 201, await response.text()
    order_id = (await response.json())["order_id"]

    async def waiting() -> dict[str, Any] | None:
        order = await (await shop["client"].get(f"/v1/orders/{order_id}", headers=who)).json()
        return order if order["status"] == "AWAITING_PAYMENT" else None

    # The customer polling the order learns that it waits for them, and where to go.
    order = await eventually(waiting, within=90, what="the order to await the customer")
    assert order["next_action_url"].startswith("https://psp.invalid/3ds/"), order
    # Paying is the customer's own act: neither another customer nor staff (who may
    # cancel and refund it) can pay for it with a card of theirs.
    admin = bearer(
        shop["minter"].token(sub=str(uuid.uuid4()), scope="profile orders:read orders:write admin")
    )
    for other in (customer(shop), admin):
        refused = await shop["client"].post(
            f"/v1/orders/{order_id}/payment", json={"card_token": card()}, headers=other
        )
        await problem(refused, 404, "not-found")
    # The page finishes the step and sends the new token; a double submit joins it.
    token = card()
    completions = await asyncio.gather(
        *(
            shop["client"].post(
                f"/v1/orders/{order_id}/payment",
                json={"card_token": token},
                headers={**who, "X-Request-Timeout": "30000"},
            )
            for _ in range(2)
        )
    )
    assert [c.status for c in completions] == [200, 200], [await c.text() for c in completions]
    assert (await final_order(shop, who, order_id))["status"] == "COMPLETED"
    assert await captures_for(settings, order_id) == 1
    history = await temporal.get_workflow_handle(order_workflow_id(order_id)).fetch_history()
    updates = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert updates == ["accept", "complete_payment"]


async def test_cancel_after_completion_refunds_everything_and_returns_the_stock(
    settings: Settings, shop: dict[str, Any]
) -> None:
    sku = await product_with_stock(shop, 3, price=1000)
    who = customer(shop)
    accepted = await (await place(shop, who, sku, quantity=2)).json()
    await final_order(shop, who, accepted["order_id"])
    response = await shop["client"].post(
        f"/v1/orders/{accepted['order_id']}/cancel", json={"reason": "changed my mind"}, headers=who
    )
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert (answer["status"], answer["refunded_minor"]) == ("CANCELLED", 2000)
    assert [line["quantity"] for line in answer["lines"]] == [2]
    order = await (
        await shop["client"].get(f"/v1/orders/{accepted['order_id']}", headers=who)
    ).json()
    assert (order["status"], order["refunded_minor"]) == ("CANCELLED", 2000)
    level = await stock(shop, sku)
    assert level["on_hand"] == 3
    assert (await ledger(settings)).balanced


async def test_a_partial_refund_then_an_excessive_one(shop: dict[str, Any]) -> None:
    sku = await product_with_stock(shop, 2, price=1000)
    who = customer(shop)
    accepted = await (await place(shop, who, sku, quantity=2)).json()
    await final_order(shop, who, accepted["order_id"])
    url = f"/v1/orders/{accepted['order_id']}/refunds"
    response = await shop["client"].post(
        url,
        json={"amount_minor": 500, "reason": "damaged box"},
        headers={**who, "Idempotency-Key": f"refund-{uuid.uuid4()}"},
    )
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert (answer["status"], answer["refunded_minor"]) == ("PARTIALLY_REFUNDED", 500)
    failed_key = f"refund-{uuid.uuid4()}"
    too_much = await shop["client"].post(
        url, json={"amount_minor": 5000}, headers={**who, "Idempotency-Key": failed_key}
    )
    # The same answer payments gives when a refund made meanwhile is not yet recorded.
    await problem(too_much, 422, "precondition-failed")
    # A failed run's key may be retried, but for the request it was sent with: another
    # body under it started a new run, whose own memo the key's check then compared.
    other = await shop["client"].post(
        url, json={"amount_minor": 100}, headers={**who, "Idempotency-Key": failed_key}
    )
    await problem(other, 409, "conflict")
    again = await shop["client"].post(
        url, json={"amount_minor": 5000}, headers={**who, "Idempotency-Key": failed_key}
    )
    await problem(again, 422, "precondition-failed")
    order = await shop["client"].get(f"/v1/orders/{accepted['order_id']}", headers=who)
    assert (await order.json())["refunded_minor"] == 500


async def test_refund_keys_are_per_order_so_a_reused_one_refunds_each_order(
    shop: dict[str, Any],
) -> None:
    # Two customers who happen to send the same Idempotency-Key, and two orders each
    # cancelled after completion (refund key "cancel"): every refund reaches its order.
    sku = await product_with_stock(shop, 4, price=1000)
    orders = []
    for _ in range(2):
        who = customer(shop)
        accepted = await (await place(shop, who, sku, quantity=1)).json()
        orders.append((who, (await final_order(shop, who, accepted["order_id"]))["order_id"]))
    shared_key = f"refund-{uuid.uuid4()}"
    for who, order_id in orders:
        response = await shop["client"].post(
            f"/v1/orders/{order_id}/refunds",
            json={"amount_minor": 300, "reason": "late"},
            headers={**who, "Idempotency-Key": shared_key},
        )
        assert response.status == 200, await response.text()
        assert (await response.json())["status"] == "PARTIALLY_REFUNDED"
    for who, order_id in orders:
        response = await shop["client"].post(
            f"/v1/orders/{order_id}/cancel", json={"reason": "changed my mind"}, headers=who
        )
        assert response.status == 200, await response.text()
        order = await (await shop["client"].get(f"/v1/orders/{order_id}", headers=who)).json()
        assert (order["status"], order["refunded_minor"]) == ("CANCELLED", 1000)


async def test_a_second_saga_for_an_ended_order_is_stopped_before_any_effect(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # Past the namespace's retention Temporal no longer knows the first run, and the
    # same key could start a saga again: its first step (record) refuses, and no
    # saga step rewrites an ended order's status.
    sku = await product_with_stock(shop, 2)
    who = customer(shop)
    accepted = await (await place(shop, who, sku)).json()
    order_id = (await final_order(shop, who, accepted["order_id"]))["order_id"]
    pool = await asyncpg.create_pool(settings.db_dsn("orders"), min_size=1, max_size=1)
    channels = Channels(settings, caller="orders")
    try:
        activities = OrdersActivities(pool, CatalogServiceStub(channels.get("catalog")))
        env = ActivityEnvironment()  # another run than the one that placed the order
        priced = PricedOrder([PricedLine(sku, "t", 1, 1500, 1500)], "EUR", 1500)
        with pytest.raises(ApplicationError) as refused:
            await env.run(activities.record, RecordOrderInput(order_id, "c", "k", priced))
        assert (refused.value.type, refused.value.non_retryable) == ("OrderAlreadyPlaced", True)
        await env.run(
            activities.transition,
            TransitionInput(order_id, "REJECTED", "rejected", rejection="PAYMENT_FAILED"),
        )
        status = await pool.fetchval(
            "SELECT status FROM orders WHERE order_id = $1", uuid.UUID(order_id)
        )
        assert status == "COMPLETED"
    finally:
        channels.close()
        await pool.close()


async def awaiting_customer(shop: dict[str, Any], who: dict[str, str], order_id: str) -> None:
    """Until the order's saga waits for the customer's payment step (recorded PENDING)."""

    async def waiting() -> bool:
        order = await (await shop["client"].get(f"/v1/orders/{order_id}", headers=who)).json()
        return bool(order["status"] == "AWAITING_PAYMENT")

    await eventually(waiting, within=90, what="the order to await the customer")


async def cancel(shop: dict[str, Any], who: dict[str, str], order_id: str) -> dict[str, Any]:
    response = await shop["client"].post(
        f"/v1/orders/{order_id}/cancel",
        json={"reason": "changed my mind"},
        headers={**who, "X-Request-Timeout": "30000"},
    )
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def changed_in_catalog(
    shop: dict[str, Any], activities: OrdersActivities, sku: str, change: str
) -> None:
    """The product's price raised, or the product deactivated: what catalog now answers
    for a new order of it."""
    env, lines = ActivityEnvironment(), [OrderLineInput(sku, 1)]
    if change == "price risen":
        await shop["catalog"].set_price(sku, 1700)
        assert (await env.run(activities.price, PriceInput(lines, "EUR"))).total_minor == 1700
        return
    deactivated = await shop["client"].delete(
        f"/v1/admin/products/{sku}", headers=shop["catalog"].admin
    )
    assert deactivated.status == 200, await deactivated.text()
    with pytest.raises(ApplicationError) as unavailable:
        await env.run(activities.price, PriceInput(lines, "EUR"))
    assert unavailable.value.type == "ProductUnavailable"
    assert unavailable.value.category == ApplicationErrorCategory.BENIGN  # no WARNING traceback


@pytest.mark.parametrize("change", ["price risen", "product deactivated"])
async def test_the_price_step_run_again_for_a_recorded_order_answers_it_as_recorded(
    settings: Settings, shop: dict[str, Any], change: str
) -> None:
    # The saga prices and records the order in its first workflow task, as local
    # activities whose results reach its history only once that task completes. A task
    # lost after the record (the worker killed, its completion refused), or a reset to
    # it, prices again: it must answer the lines and total the order was recorded with
    # (and OrderPlaced told). Before, it answered today's price, which payments then
    # authorized while the projection held the first, or a product deactivated since
    # rejected the order with nothing recorded, and the projection kept it PENDING.
    sku = await product_with_stock(shop, 2, price=1500)
    who = customer(shop)
    response = await place(shop, who, sku, card_token=card(ACTION_CARD))
    assert response.status == 201, await response.text()
    accepted = await response.json()
    order_id = accepted["order_id"]
    await awaiting_customer(shop, who, order_id)  # recorded, its saga still running
    title = accepted["lines"][0]["title"]
    recorded = PricedOrder([PricedLine(sku, title, 1, 1500, 1500)], "EUR", 1500)
    pool = await asyncpg.create_pool(settings.db_dsn("orders"), min_size=1, max_size=1)
    channels = Channels(settings, caller="orders")
    try:
        activities = OrdersActivities(pool, CatalogServiceStub(channels.get("catalog")))
        await changed_in_catalog(shop, activities, sku, change)
        again = PriceInput([OrderLineInput(sku, 1)], "EUR", order_id)
        # Another run, as a reset's (a retried task's is the same run).
        assert await ActivityEnvironment().run(activities.price, again) == recorded
    finally:
        channels.close()
        await pool.close()
    assert (await cancel(shop, who, order_id))["status"] == "CANCELLED"


async def cancelled_event(settings: Settings, order_id: str) -> OrderCancelled:
    """The order's OrderCancelled, as its outbox holds it."""
    conn = await asyncpg.connect(settings.db_dsn("orders"))
    try:
        rows = await conn.fetch(
            "SELECT envelope FROM outbox WHERE aggregate_type = 'order' AND aggregate_id = $1"
            " AND event_type = 'orders.OrderCancelled'",
            order_id,
        )
    finally:
        await conn.close()
    assert len(rows) == 1, rows
    return OrderCancelled.parse(EventEnvelope.parse(bytes(rows[0]["envelope"])).payload)


async def test_the_sagas_cancel_of_a_pending_order_tells_the_status_it_left(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # OrderCancelled tells the status the order left; the saga's own cancel sent none
    # (UNSPECIFIED), where a cancel after completion sent COMPLETED.
    sku = await product_with_stock(shop, 2)
    who = customer(shop)
    response = await place(shop, who, sku, card_token=card(ACTION_CARD))
    assert response.status == 201, await response.text()
    order_id = (await response.json())["order_id"]
    await awaiting_customer(shop, who, order_id)
    assert (await cancel(shop, who, order_id))["status"] == "CANCELLED"
    event = await cancelled_event(settings, order_id)
    assert (event.previous_status, event.reason) == (OrderStatus.PENDING, "changed my mind")


async def test_the_sagas_cancel_of_a_confirmed_order_tells_the_status_it_left(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # The cancel reaches the saga while it captures (held by a lock of the test's): the
    # order is CONFIRMED, and the capture is refunded once it completes.
    temporal: Client = shop["gw"].upstream.temporal
    sku = await product_with_stock(shop, 2, price=1500)
    who, key, order_id = keyed_order(shop, "cancel-confirmed")
    handle = temporal.get_workflow_handle(order_workflow_id(order_id))

    async def cancel_accepted() -> bool:
        history = await handle.fetch_history()
        accepted = [
            e
            for e in history.events
            if e.HasField("workflow_execution_update_accepted_event_attributes")
        ]
        return len(accepted) >= 2  # the POST's accept, and the cancel

    hold = await hold_before_placing(settings, "payments.capture", order_id)
    cancelling: asyncio.Task[dict[str, Any]] | None = None
    try:
        assert (await place(shop, who, sku, key=key)).status == 201
        await step_in_flight(temporal, order_id, "payments.capture", hold)
        cancelling = asyncio.create_task(cancel(shop, who, order_id))
        await eventually(cancel_accepted, within=30, what="the saga to accept the cancel")
    finally:
        await hold.release()
        answer = await cancelling if cancelling is not None else None
    assert answer is not None
    assert (answer["status"], answer["refunded_minor"]) == ("CANCELLED", 1500)
    event = await cancelled_event(settings, order_id)
    assert event.previous_status == OrderStatus.CONFIRMED
    assert event.refunded is not None and event.refunded.amount_minor == 1500


async def test_a_refund_retried_with_its_key_answers_the_first_refund(
    settings: Settings, shop: dict[str, Any]
) -> None:
    sku = await product_with_stock(shop, 1, price=1000)
    who = customer(shop)
    accepted = await (await place(shop, who, sku)).json()
    await final_order(shop, who, accepted["order_id"])
    url = f"/v1/orders/{accepted['order_id']}/refunds"
    refund = {
        "json": {"reason": "never arrived"},
        "headers": {**who, "Idempotency-Key": f"refund-{uuid.uuid4()}"},
    }
    answers = []
    for _ in range(2):  # the second after the first refund's workflow has closed
        response = await shop["client"].post(url, **refund)
        assert response.status == 200, await response.text()
        answers.append(await response.json())
    assert answers[0] == answers[1]
    assert answers[0]["status"] == "REFUNDED"
    order = await (
        await shop["client"].get(f"/v1/orders/{accepted['order_id']}", headers=who)
    ).json()
    assert order["refunded_minor"] == 1000
    assert (await ledger(settings)).balanced
    # The same key with another request is refused, not answered with the first refund.
    other = {**refund, "json": {"reason": "never arrived", "amount_minor": 400}}
    reused = await shop["client"].post(url, **other)
    body = await problem(reused, 409, "conflict")
    assert "Idempotency-Key" in body["detail"]


async def test_status_changes_are_listed_in_the_order_they_were_written(
    settings: Settings, shop: dict[str, Any]
) -> None:
    # Two writers of one order's history (a refund, the saga's cancel): the one whose
    # transaction began first may write second. The history follows the writes.
    sku = await product_with_stock(shop, 2)
    who = customer(shop)
    accepted = await (await place(shop, who, sku, quantity=1)).json()
    order_id = accepted["order_id"]
    await final_order(shop, who, order_id)
    early = await asyncpg.connect(settings.db_dsn("orders"))
    late = await asyncpg.connect(settings.db_dsn("orders"))
    insert = (
        "INSERT INTO order_status_history (order_id, transition_key, status, reason)"
        " VALUES ($1, $2, 'COMPLETED', $3)"
    )
    try:
        began_first = early.transaction()
        await began_first.start()
        await early.fetchval("SELECT now()")  # its transaction's clock starts here
        await late.execute(insert, uuid.UUID(order_id), "test-written-first", "first")
        await early.execute(insert, uuid.UUID(order_id), "test-written-second", "second")
        await began_first.commit()
    finally:
        await early.close()
        await late.close()
    order = await (await shop["client"].get(f"/v1/orders/{order_id}", headers=who)).json()
    assert [h["reason"] for h in order["status_history"]][-2:] == ["first", "second"]


def test_only_services_whose_work_needs_redis_check_it_for_readiness(
    shop: dict[str, Any], services
) -> None:
    # A Redis failover must not take every pod of every service out of rotation.
    # (The shop runs these already: no process is started early for this.)
    checks = {}
    for name in ("identity", "orders", "inventory"):
        process = services(name)
        url = f"http://{process.settings.host}:{process.settings.side_port(name)}/readyz"
        with urllib.request.urlopen(url, timeout=5) as response:
            checks[name] = set(json.loads(response.read())["checks"])
    assert checks == {
        "identity": {"postgres", "redis"},
        "orders": {"postgres"},
        "inventory": {"postgres"},
    }
