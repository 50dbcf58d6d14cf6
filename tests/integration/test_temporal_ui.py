"""Inspecting orders in the Temporal UI: search attributes, the admin search, the codec server.

The real stack, services and gateway: orders are placed through the gateway, then
found by their typed search attributes (visibility queries and the admin route),
their encrypted payloads are decoded by the codec server only for staff, and a
headless Chromium (Debian's package, driven by playwright-core) finds the order in
the Temporal UI and reads its lines in clear.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import Client

from agora.config import Settings
from gateway import codec
from tests.integration.catalogkit import CatalogApi
from tests.integration.gatewaykit import PASSWORD, TokenMinter, bearer, problem, running_gateway
from tests.integration.uikit import (
    install_browser,
    run_browser_script,
    screenshot,
)
from tests.integration.waiting import eventually
from workers.payments.psp_sim import tokenize
from workflows.identity import (
    TASK_QUEUE as IDENTITY_QUEUE,
)
from workflows.identity import (
    RegisterAccountInput,
    RegisterAccountWorkflow,
    register_workflow_id,
)
from workflows.orders import order_workflow_id

pytestmark = pytest.mark.integration

SERVICES = ("identity", "catalog", "inventory", "payments", "orders")
OK_CARD = "4242424242424242"
DECLINED_CARD = "4000000000009995"
CUSTOMER_SCOPES = "profile catalog:read orders:read orders:write"


@pytest.fixture(scope="module")
async def shop(settings: Settings, services: Any) -> AsyncIterator[dict[str, Any]]:
    for service in SERVICES:
        services(service)
    minter = TokenMinter(settings)
    async with running_gateway(settings, minter, on_gateway_port=True) as (gw, client):
        yield {"gw": gw, "client": client, "minter": minter, "catalog": CatalogApi(client, minter)}


async def product_with_stock(shop: dict[str, Any], units: int = 20) -> str:
    sku = f"UI-{uuid.uuid4().hex[:10]}"
    await shop["catalog"].create(sku=sku, price={"amount_minor": 2450, "currency": "EUR"})
    restocker = bearer(shop["minter"].token(scope="profile inventory:write catalog:read"))
    response = await shop["client"].post(
        f"/v1/admin/inventory/{sku}/restock", json={"quantity": units}, headers=restocker
    )
    assert response.status == 200, await response.text()
    return sku


async def place_and_finish(
    shop: dict[str, Any], customer_id: str, sku: str, card_number: str
) -> dict[str, Any]:
    who = bearer(shop["minter"].token(sub=customer_id, scope=CUSTOMER_SCOPES))
    response = await shop["client"].post(
        "/v1/orders",
        json={
            "lines": [{"sku": sku, "quantity": 2}],
            "currency": "EUR",
            "payment": {"card_token": tokenize(card_number, 12, 2030).token},
        },
        headers={**who, "Idempotency-Key": f"ui-{uuid.uuid4()}", "X-Request-Timeout": "30000"},
    )
    assert response.status == 201, await response.text()
    order_id = (await response.json())["order_id"]

    async def finished() -> dict[str, Any] | None:
        answer = await shop["client"].get(f"/v1/orders/{order_id}", headers=who)
        body: dict[str, Any] = await answer.json()
        return body if body.get("status") in ("COMPLETED", "REJECTED", "CANCELLED") else None

    return await eventually(finished, within=90, what=f"order {order_id} to finish")


@pytest.fixture(scope="module")
async def orders(shop: dict[str, Any]) -> dict[str, Any]:
    """One customer with a completed order and a declined one."""
    customer_id = str(uuid.uuid4())
    sku = await product_with_stock(shop)
    completed = await place_and_finish(shop, customer_id, sku, OK_CARD)
    declined = await place_and_finish(shop, customer_id, sku, DECLINED_CARD)
    assert completed["status"] == "COMPLETED"
    assert declined["status"] == "REJECTED"
    return {"customer_id": customer_id, "sku": sku, "completed": completed, "declined": declined}


def admin(shop: dict[str, Any]) -> dict[str, str]:
    return bearer(shop["minter"].token(scope="profile admin orders:read"))


def staff(shop: dict[str, Any], scope: str = "profile support") -> dict[str, str]:
    return bearer(shop["minter"].token(scope=scope))


async def visible(client: Client, query: str, expected: int) -> list[str]:
    """Visibility is eventually consistent: poll until the query finds what it should."""

    async def probe() -> list[str] | None:
        ids = [execution.id async for execution in client.list_workflows(query)]
        return ids if len(ids) >= expected else None

    return await eventually(probe, within=30, what=f"{expected} workflows for {query}")


# Search attributes ---------------------------------------------------------------


async def test_visibility_queries_find_orders_by_their_search_attributes(
    shop: dict[str, Any], orders: dict[str, Any]
) -> None:
    client = shop["gw"].upstream.temporal
    customer = orders["customer_id"]
    completed = order_workflow_id(orders["completed"]["order_id"])
    declined = order_workflow_id(orders["declined"]["order_id"])

    mine = await visible(client, f'CustomerId = "{customer}"', 2)
    assert set(mine) == {completed, declined}
    rejected = await visible(client, f'CustomerId = "{customer}" AND OrderStatus = "REJECTED"', 1)
    assert rejected == [declined]
    by_outcome = await visible(
        client, f'CustomerId = "{customer}" AND PaymentOutcome = "declined"', 1
    )
    assert by_outcome == [declined]
    large = await visible(client, f'CustomerId = "{customer}" AND OrderTotal >= 4900', 2)
    assert set(large) == {completed, declined}
    description = await client.get_workflow_handle(completed).describe()
    attributes = {key.name: value for key, value in description.typed_search_attributes}
    assert attributes["OrderId"] == orders["completed"]["order_id"]
    assert attributes["OrderStatus"] == "COMPLETED"
    assert attributes["ItemCount"] == 2
    assert attributes["OrderTotal"] == 4900
    assert attributes["PaymentOutcome"] == "captured"


# The admin search route -----------------------------------------------------------


async def test_admin_search_finds_a_customers_rejected_order(
    shop: dict[str, Any], orders: dict[str, Any]
) -> None:
    customer = orders["customer_id"]

    async def rejected() -> dict[str, Any] | None:
        response = await shop["client"].get(
            "/v1/admin/orders",
            params={"customer_id": customer, "status": "REJECTED"},
            headers=admin(shop),
        )
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        # The status is upserted before the run closes: wait for both.
        done = body["orders"] and body["orders"][0]["workflow_status"] == "COMPLETED"
        return body if done else None

    body = await eventually(rejected, within=30, what="the admin search to find the order")
    assert [o["order_id"] for o in body["orders"]] == [orders["declined"]["order_id"]]
    found = body["orders"][0]
    assert found["customer_id"] == customer
    assert found["payment_outcome"] == "declined"
    assert found["workflow_status"] == "COMPLETED"
    assert found["workflow_url"].endswith(f"/workflows/{found['workflow_id']}/{found['run_id']}")
    assert body["query"] == (
        f'WorkflowType = "Order" AND OrderStatus = "REJECTED" AND CustomerId = "{customer}"'
    )


async def test_admin_search_pages_with_a_cursor(
    shop: dict[str, Any], orders: dict[str, Any]
) -> None:
    async def both_listed() -> bool:
        params = {"customer_id": orders["customer_id"]}
        response = await shop["client"].get("/v1/admin/orders", params=params, headers=admin(shop))
        return response.status == 200 and len((await response.json())["orders"]) == 2

    await eventually(both_listed, within=30, what="both orders in the admin search")
    first = await admin_search_page(shop, orders["customer_id"], "")
    assert len(first["orders"]) == 1 and first["next_cursor"], first
    second = await admin_search_page(shop, orders["customer_id"], first["next_cursor"])
    assert len(second["orders"]) == 1, second
    # Temporal's visibility hands out a token whenever a page is full, so a full last
    # page still carries a cursor: it leads to an empty page that ends the listing.
    assert second["next_cursor"], second
    last = await admin_search_page(shop, orders["customer_id"], second["next_cursor"])
    assert last["orders"] == [] and not last["next_cursor"], last
    seen = [page["orders"][0]["order_id"] for page in (first, second)]
    assert sorted(seen) == sorted([orders["completed"]["order_id"], orders["declined"]["order_id"]])


async def admin_search_page(shop: dict[str, Any], customer_id: str, cursor: str) -> dict[str, Any]:
    """One page of one order from the admin search."""
    params = {"customer_id": customer_id, "page_size": "1"}
    if cursor:
        params["cursor"] = cursor
    response = await shop["client"].get("/v1/admin/orders", params=params, headers=admin(shop))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


@pytest.mark.parametrize(
    "params",
    [
        {"customer_id": 'x" OR WorkflowType != "'},
        {"status": 'REJECTED" OR OrderStatus != "'},
        {"order_id": "00000000-0000-0000-0000-000000000000' OR 1=1"},
        {"min_total_minor": "1 OR 1=1"},
        {"query": 'OrderStatus = "REJECTED"'},
    ],
)
async def test_admin_search_refuses_anything_but_typed_filters(
    shop: dict[str, Any], params: dict[str, str]
) -> None:
    gw = shop["gw"]
    before = gw.upstream.calls["temporal.ListWorkflows"]
    response = await shop["client"].get("/v1/admin/orders", params=params, headers=admin(shop))
    await problem(response, 422, "validation-failed")
    assert gw.upstream.calls["temporal.ListWorkflows"] == before


async def test_a_cursor_the_route_did_not_answer_is_refused_before_temporal(
    shop: dict[str, Any], orders: dict[str, Any]
) -> None:
    # Temporal cannot read a page token cut short or made up, and fails it UNKNOWN,
    # which its SDK retries until the request's deadline: it was a 503 after that.
    first = await admin_search_page(shop, orders["customer_id"], "")
    good = first["next_cursor"]
    made_up = base64.urlsafe_b64encode(b'{"CloseTime":"x","RunID":"y"}' + bytes(8)).decode()
    gw = shop["gw"]
    for cursor in ("EEos", "AAAA", good[: len(good) // 2], good[:-4] + "AAAA", made_up):
        before = gw.upstream.calls["temporal.ListWorkflows"]
        response = await shop["client"].get(
            "/v1/admin/orders", params={"cursor": cursor}, headers=admin(shop)
        )
        await problem(response, 400, "invalid-argument")
        assert gw.upstream.calls["temporal.ListWorkflows"] == before, cursor


async def test_admin_search_needs_the_admin_scope(shop: dict[str, Any]) -> None:
    customer = bearer(shop["minter"].token(scope=CUSTOMER_SCOPES))
    response = await shop["client"].get("/v1/admin/orders", headers=customer)
    await problem(response, 403, "insufficient-scope")
    response = await shop["client"].get("/v1/admin/orders")
    await problem(response, 401, "token-missing")


# The codec server -------------------------------------------------------------------


async def started_input(shop: dict[str, Any], workflow_id: str) -> dict[str, Any]:
    """The workflow's input as stored (encrypted), in the codec protocol's JSON."""
    from google.protobuf import json_format

    raw = await Client.connect(
        shop["gw"].settings.temporal_address, namespace=shop["gw"].settings.temporal_namespace
    )
    history = await raw.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    document: dict[str, Any] = json_format.MessageToDict(started.input)
    return document


def ui_origin(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.ports['temporal_ui']}"


async def test_codec_decodes_an_order_input_for_support_staff(
    shop: dict[str, Any], orders: dict[str, Any]
) -> None:
    stored = await started_input(shop, order_workflow_id(orders["completed"]["order_id"]))
    assert orders["sku"] not in json.dumps(stored)  # encrypted at rest
    response = await shop["client"].post(
        "/codec/decode",
        json=stored,
        headers={**staff(shop), "X-Namespace": "default", "Origin": ui_origin(shop["gw"].settings)},
    )
    assert response.status == 200, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == ui_origin(shop["gw"].settings)
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    decoded = (await response.json())["payloads"][0]
    import base64

    assert base64.b64decode(decoded["metadata"]["encoding"]) == b"json/plain"
    order = json.loads(base64.b64decode(decoded["data"]))
    assert order["lines"][0]["sku"] == orders["sku"]
    assert order["customer_id"] == orders["customer_id"]


async def test_codec_encode_then_decode_round_trips(shop: dict[str, Any]) -> None:
    import base64

    clear = {
        "payloads": [
            {
                "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                "data": base64.b64encode(b'{"address":"1 Private Road"}').decode(),
            }
        ]
    }
    # Encoding lets a payload into the workers (they refuse one in clear): admin only.
    refused = await shop["client"].post("/codec/encode", json=clear, headers=staff(shop))
    await problem(refused, 403, "insufficient-scope")
    admin = staff(shop, "profile admin")
    encoded = await shop["client"].post("/codec/encode", json=clear, headers=admin)
    assert encoded.status == 200, await encoded.text()
    sealed = await encoded.json()
    assert b"Private Road" not in base64.b64decode(sealed["payloads"][0]["data"])
    decoded = await shop["client"].post("/codec/decode", json=sealed, headers=staff(shop))
    assert (await decoded.json()) == clear


async def test_codec_refuses_anyone_but_staff(shop: dict[str, Any], orders: dict[str, Any]) -> None:
    stored = await started_input(shop, order_workflow_id(orders["completed"]["order_id"]))
    client = shop["client"]
    origin = {"Origin": ui_origin(shop["gw"].settings)}
    response = await client.post("/codec/decode", json=stored, headers=origin)
    body = await problem(response, 401, "token-missing")
    # The UI can read the refusal (CORS on errors too), and it names no payload.
    assert response.headers["Access-Control-Allow-Origin"] == origin["Origin"]
    assert orders["sku"] not in json.dumps(body)
    customer = bearer(shop["minter"].token(scope=CUSTOMER_SCOPES))
    response = await client.post("/codec/decode", json=stored, headers={**customer, **origin})
    await problem(response, 403, "insufficient-scope")
    api_client = bearer(shop["minter"].token(scope="profile support", ptype="api_client"))
    response = await client.post("/codec/decode", json=stored, headers=api_client)
    await problem(response, 403, "permission-denied")
    expired = bearer(shop["minter"].token(scope="profile support", exp=1, iat=0, nbf=0))
    response = await client.post("/codec/decode", json=stored, headers=expired)
    await problem(response, 401, "token-expired")


async def test_refused_tokens_at_the_codec_are_charged_to_the_sender_s_address(
    shop: dict[str, Any],
) -> None:
    # As on the API's routes: a made-up or revoked token costs the address a request
    # of the read class, so a flood of them ends in 429s, not endless signature checks.
    gw, client = shop["gw"], shop["client"]
    jti = str(uuid.uuid4())
    revoked = shop["minter"].token(scope="profile support", jti=jti)
    bucket = "gateway:rl:read:ip:127.0.0.1"  # the test client's address
    full_for_an_hour = (time.time() + 3600) * 1_000_000
    await gw.redis.set(f"identity:revoked:jti:{jti}", "1", ex=60)
    await gw.redis.set(bucket, int(full_for_an_hour), ex=3600)
    sealed = {"payloads": []}
    try:
        for token in ("not.a.jwt", revoked):
            response = await client.post("/codec/decode", json=sealed, headers=bearer(token))
            await problem(response, 429, "rate-limited")
            assert response.headers["Retry-After"]
    finally:
        await gw.redis.delete(bucket)
    response = await client.post("/codec/decode", json=sealed, headers=bearer("not.a.jwt"))
    await problem(response, 401, "token-malformed")
    response = await client.post("/codec/decode", json=sealed, headers=bearer(revoked))
    await problem(response, 401, "token-revoked")


async def test_codec_refuses_other_origins_and_namespaces(
    shop: dict[str, Any], orders: dict[str, Any]
) -> None:
    stored = await started_input(shop, order_workflow_id(orders["completed"]["order_id"]))
    client = shop["client"]
    evil = {"Origin": "http://127.0.0.1:9", **staff(shop)}
    response = await client.post("/codec/decode", json=stored, headers=evil)
    await problem(response, 403, "permission-denied")
    assert "Access-Control-Allow-Origin" not in response.headers
    response = await client.post(
        "/codec/decode", json=stored, headers={**staff(shop), "X-Namespace": "other"}
    )
    await problem(response, 403, "permission-denied")
    # A "simple" cross-site request (no preflight) is refused before any decryption.
    response = await client.post(
        "/codec/decode",
        data=json.dumps(stored),
        headers={**staff(shop), "Content-Type": "text/plain"},
    )
    await problem(response, 415, "unsupported-media-type")


async def test_codec_preflight_answers_only_the_ui_origin(shop: dict[str, Any]) -> None:
    settings = shop["gw"].settings
    request_headers = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    for origin in (ui_origin(settings), f"http://localhost:{settings.ports['temporal_ui']}"):
        response = await shop["client"].options(
            "/codec/decode", headers={**request_headers, "Origin": origin}
        )
        assert response.status == 204, await response.text()
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "x-namespace" in response.headers["Access-Control-Allow-Headers"].lower()
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
    response = await shop["client"].options(
        "/codec/decode", headers={**request_headers, "Origin": "http://evil.example"}
    )
    await problem(response, 403, "permission-denied")
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_codec_session_cookie_is_http_only_strict_and_scoped(
    shop: dict[str, Any],
) -> None:
    response = await shop["client"].post("/codec/session", headers=staff(shop))
    assert response.status == 204, await response.text()
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{codec.COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/codec", "Max-Age="):
        assert attribute in cookie, cookie
    # A customer cannot get one.
    customer = bearer(shop["minter"].token(scope=CUSTOMER_SCOPES))
    response = await shop["client"].post("/codec/session", headers=customer)
    await problem(response, 403, "insufficient-scope")
    assert "Set-Cookie" not in response.headers


async def test_closing_a_codec_session_revokes_its_token(shop: dict[str, Any]) -> None:
    email = await register_staff(shop, "support")
    client = shop["client"]
    form = {"email": email, "password": PASSWORD}
    response = await client.post("/codec/session", data=form)
    assert response.status == 200, await response.text()
    token = response.cookies[codec.COOKIE].value
    sealed = {"payloads": []}
    response = await client.post("/codec/decode", json=sealed, headers=bearer(token))
    assert response.status == 200, await response.text()

    response = await client.delete("/codec/session", headers={"Cookie": f"{codec.COOKIE}={token}"})
    assert response.status == 204, await response.text()
    assert response.cookies[codec.COOKIE].value == ""  # cleared in the browser
    # ... and no longer good anywhere: a copy of the cookie decodes nothing.
    response = await client.post("/codec/decode", json=sealed, headers=bearer(token))
    await problem(response, 401, "token-revoked")
    # Closing again (the cookie left behind by another tab) just clears it.
    response = await client.delete("/codec/session", headers={"Cookie": f"{codec.COOKIE}={token}"})
    assert response.status == 204, await response.text()


# The browser -------------------------------------------------------------------------


async def register_staff(shop: dict[str, Any], role: str) -> str:
    """A staff account as an operator makes one (workers.identity.admin does the same)."""
    gw = shop["gw"]
    email = f"{role}-{uuid.uuid4().hex[:10]}@example.com"
    password_hash = await gw.passwords.hash(PASSWORD)
    await gw.upstream.temporal.execute_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(
            account_id=str(uuid.uuid4()),
            email=email,
            display_name=role.capitalize(),
            password_hash=password_hash,
            roles=[role],
        ),
        id=register_workflow_id(email),
        task_queue=IDENTITY_QUEUE,
    )
    return email


async def test_temporal_ui_shows_an_order_found_by_search_attribute_decoded_only_for_staff(
    shop: dict[str, Any], orders: dict[str, Any], settings: Settings
) -> None:
    await asyncio.to_thread(install_browser)
    support = await register_staff(shop, "support")
    customer = await register_staff(shop, "customer")
    workflow_id = order_workflow_id(orders["completed"]["order_id"])
    await visible(shop["gw"].upstream.temporal, f'CustomerId = "{orders["customer_id"]}"', 2)
    env = {
        "UI_URL": settings.temporal_ui_url,
        "GATEWAY_URL": f"http://{settings.host}:{settings.ports['gateway']}",
        "CODEC_ENDPOINT": settings.ui_codec_endpoint,
        "NAMESPACE": settings.temporal_namespace,
        "CUSTOMER_ID": orders["customer_id"],
        "WORKFLOW_ID": workflow_id,
        "SKU": orders["sku"],
        "STAFF_EMAIL": support,
        "CUSTOMER_EMAIL": customer,
        "PASSWORD": PASSWORD,
    }
    result = await asyncio.to_thread(run_browser_script, env)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])

    # A customer's sign-in is refused: no codec session, payloads stay encrypted.
    assert report["customer_sign_in_status"] == 403
    assert report["signed_out"]["codec_status"] == 401
    assert orders["sku"] not in report["signed_out"]["input_text"]
    assert orders["customer_id"] not in report["signed_out"]["input_text"]
    assert "Codec Server could not connect" in report["signed_out"]["input_text"]
    # Support staff find the order by its search attribute and read its lines.
    assert report["staff"]["sign_in_status"] == 200
    # The customer has exactly two orders: the list filtered by CustomerId shows both, once each.
    declined_id = order_workflow_id(orders["declined"]["order_id"])
    assert report["staff"]["list_query"] == f'CustomerId = "{orders["customer_id"]}"'
    assert sorted(report["staff"]["listed_workflow_ids"]) == sorted([workflow_id, declined_id])
    assert report["staff"]["listed_rows"] == 2
    assert report["staff"]["codec_status"] == 200
    assert orders["sku"] in report["staff"]["input_text"]
    assert screenshot(report["staff"]["screenshot"]).stat().st_size > 10_000
    assert screenshot(report["signed_out"]["screenshot"]).stat().st_size > 10_000
