"""Security checks at the public edge, against a real gateway process and the real services.

* Secrets (passwords, API-client secrets, access and refresh tokens, card numbers)
  never appear in any log file of the run, in any trace stored in Jaeger, or in
  any error body: a flow uses each secret, then everything is grepped for it.
* SQL injection strings, NUL bytes and oversized values in path parameters, query
  parameters and JSON fields are harmless: no 5xx, and the data is intact.
* A customer's token never reaches another customer's orders, refunds, cancel or
  payment completion, and /v1/me is always the caller.
* Cursors of every paged route: any value is a page or a 4xx, never a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Container, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import argon2
import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agora import signing
from agora import temporal as platform_temporal
from agora.config import SERVICES, Settings
from stack.base import Context
from tests.integration.conftest import Services, stack_component, tail
from tests.integration.observabilitykit import jaeger_trace, services_of
from tests.integration.waiting import eventually
from workers.payments.psp_sim import tokenize
from workflows.identity import (
    TASK_QUEUE,
    RegisterAccountInput,
    RegisterAccountWorkflow,
    register_workflow_id,
)

pytestmark = pytest.mark.integration

CARD_NUMBER = "4242424242424242"
INJECTIONS = ["' OR 1=1 --", '"; DROP TABLE orders; --', "a\x00b", "%00", "../../etc/passwd"]
MEGABYTE = "x" * (1 << 20)
GATEWAY_LOG = "test-gateway-security.log"


class Edge:
    """An HTTP client of the gateway process, remembering every answer's body."""

    def __init__(self, session: aiohttp.ClientSession, base: str):
        self.session = session
        self.base = base
        self.bodies: list[str] = []
        # The X-Trace-Id of the last answer: the trace the request started.
        self.trace_id = ""

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=40))
        async with self.session.request(method, self.base + path, **kwargs) as response:
            text = await response.text(errors="replace")
            self.bodies.append(text)
            self.trace_id = response.headers.get("X-Trace-Id", "")
            try:
                body: Any = json.loads(text) if text else None
            except ValueError:
                body = text
            return response.status, body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def gateway_process(settings: Settings, services: Services) -> Iterator[str]:
    """`python -m gateway`, as deployed: its own log file, its own traces."""
    for service in SERVICES:
        services(service)
    log = settings.state_dir / "logs" / GATEWAY_LOG
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "AGORA_PROFILE": settings.profile,
                # Many sign-ins from 127.0.0.1 in one test.
                "AGORA_RATE_LIMIT_AUTH": "1000/s burst 1000",
                "AGORA_RATE_LIMIT_WRITE": "1000/s burst 1000",
                "AGORA_RATE_LIMIT_READ": "1000/s burst 1000",
                "AGORA_RATE_LIMIT_SIGNIN": "1000/s burst 1000",
            },
            start_new_session=True,
        )
    # Recorded as the stack's gateway: `stack down` stops it if this run is killed.
    stack_component("gateway").adopt(Context(settings), proc.pid, proc.args)
    side = f"http://{settings.host}:{settings.ports['gateway_side']}/readyz"
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, tail(log)
            try:
                with urllib.request.urlopen(side, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, tail(log)
            time.sleep(0.2)
        yield f"http://{settings.host}:{settings.ports['gateway']}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
async def edge(gateway_process: str) -> AsyncIterator[Edge]:
    async with aiohttp.ClientSession() as session:
        yield Edge(session, gateway_process)


async def register_admin(settings: Settings, password: str) -> str:
    """An admin account, created as an operator does (the workflow with roles=["admin"])."""
    email = f"admin-{uuid.uuid4().hex[:10]}@example.com"
    client = await platform_temporal.connect(settings, sdk_metrics=False)
    await client.execute_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(
            account_id=str(uuid.uuid4()),
            email=email,
            display_name="Admin",
            password_hash=argon2.PasswordHasher().hash(password),
            roles=["admin"],
        ),
        id=register_workflow_id(email),
        task_queue=TASK_QUEUE,
    )
    return email


async def customer(edge: Edge, password: str) -> dict[str, Any]:
    email = f"cust-{uuid.uuid4().hex[:10]}@example.com"
    status, body = await edge.request(
        "POST", "/v1/accounts", json={"email": email, "password": password, "display_name": "C"}
    )
    assert status == 201, body
    status, tokens = await edge.request(
        "POST", "/v1/auth/signin", json={"email": email, "password": password}
    )
    assert status == 200, tokens
    return {**tokens, "email": email, "account_id": body["account_id"]}


async def stocked_product(edge: Edge, admin_token: str, price: int = 2500) -> str:
    sku = f"SEC-{uuid.uuid4().hex[:10]}"
    product = {
        "sku": sku,
        "title": "Security test product",
        "description": "d",
        "brand": "b",
        "category": "tests/security",
        "attributes": {},
        "price": {"amount_minor": price, "currency": "EUR"},
    }
    status, body = await edge.request(
        "POST", "/v1/admin/products", json=product, headers=bearer(admin_token)
    )
    assert status == 201, body
    status, body = await edge.request(
        "POST",
        f"/v1/admin/inventory/{sku}/restock",
        json={"quantity": 50},
        headers=bearer(admin_token),
    )
    assert status == 200, body
    return sku


async def place_order(edge: Edge, token: str, sku: str) -> dict[str, Any]:
    card_token = tokenize(CARD_NUMBER, 12, 2030).token  # client side: the PSP's library
    status, body = await edge.request(
        "POST",
        "/v1/orders",
        json={
            "lines": [{"sku": sku, "quantity": 1}],
            "currency": "EUR",
            "payment": {"card_token": card_token},
        },
        headers={
            **bearer(token),
            "Idempotency-Key": f"sec-{uuid.uuid4()}",
            "X-Request-Timeout": "30000",
        },
    )
    assert status == 201, body
    return body


async def final_order(edge: Edge, token: str, order_id: str) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        status, body = await edge.request("GET", f"/v1/orders/{order_id}", headers=bearer(token))
        done = status == 200 and body["status"] in ("COMPLETED", "REJECTED", "CANCELLED")
        return body if done else None

    return await eventually(finished, within=90, what=f"order {order_id} to finish")


async def admin_session(edge: Edge, settings: Settings) -> dict[str, Any]:
    password = f"admin-pw-{uuid.uuid4().hex}"
    email = await register_admin(settings, password)
    status, tokens = await edge.request(
        "POST", "/v1/auth/signin", json={"email": email, "password": password}
    )
    assert status == 200, tokens
    return {**tokens, "password": password}


# Secrets --------------------------------------------------------------------------------


def log_files(folder: Path) -> dict[str, str]:
    """Every file the run wrote under the logs folder (services, gateway, engines)."""
    return {
        f"log {path.name}": path.read_text(errors="replace")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def jaeger_traces(settings: Settings) -> dict[str, str]:
    base = f"http://{settings.host}:{settings.ports['jaeger_ui']}/api"
    with urllib.request.urlopen(f"{base}/services", timeout=10) as response:
        names = json.loads(response.read())["data"] or []
    traces = {}
    for name in names:
        query = urllib.parse.urlencode({"service": name, "limit": 2000, "lookback": "1h"})
        with urllib.request.urlopen(f"{base}/traces?{query}", timeout=30) as response:
            traces[name] = response.read().decode(errors="replace")
    return traces


async def test_secrets_never_appear_in_logs_traces_or_error_bodies(
    settings: Settings, edge: Edge
) -> None:
    password = f"pw-{uuid.uuid4().hex}-secret"
    someone = await customer(edge, password)
    # A wrong password and a malformed sign-in: their refusals must not echo the input.
    wrong = f"wrong-{uuid.uuid4().hex}"
    status, _ = await edge.request(
        "POST", "/v1/auth/signin", json={"email": someone["email"], "password": wrong}
    )
    assert status == 401
    # The traces the flow's requests started, and the services each must have crossed.
    crossed = {"wrong-password sign-in": (edge.trace_id, {"gateway", "identity"})}
    status, _ = await edge.request(
        "POST",
        "/v1/auth/signin",
        json={"email": someone["email"], "password": wrong, "extra": password},
    )
    assert status == 422
    status, _ = await edge.request(
        "POST", "/v1/accounts", json={"email": "not-an-email", "password": wrong * 10}
    )
    assert status == 422
    # Refresh rotates: both generations of tokens are secrets.
    status, rotated = await edge.request(
        "POST", "/v1/auth/refresh", json={"refresh_token": someone["refresh_token"]}
    )
    assert status == 200, rotated
    crossed["token refresh"] = (edge.trace_id, {"gateway", "identity"})
    status, _ = await edge.request("GET", "/v1/me", headers=bearer(rotated["access_token"]))
    assert status == 200

    admin = await admin_session(edge, settings)
    status, client = await edge.request(
        "POST",
        "/v1/admin/api-clients",
        json={"name": "sec", "scopes": ["profile", "identity:admin"]},
        headers=bearer(admin["access_token"]),
    )
    assert status == 201, client
    status, machine = await edge.request(
        "POST",
        "/v1/auth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert status == 200, machine
    crossed["client credentials grant"] = (edge.trace_id, {"gateway", "identity"})
    headers = {
        **bearer(machine["access_token"]),
        **signing.sign_headers(client["client_secret"], "GET", "/v1/admin/api-clients"),
    }
    status, listed = await edge.request("GET", "/v1/admin/api-clients", headers=headers)
    assert status == 200, listed
    crossed["signed request"] = (edge.trace_id, {"gateway", "identity"})
    bad = {**headers, signing.NONCE_HEADER: signing.new_nonce()}
    status, _ = await edge.request("GET", "/v1/admin/api-clients", headers=bad)
    assert status == 401

    sku = await stocked_product(edge, admin["access_token"])
    # The one way a card number reaches the platform: a client pasting it as the token.
    status, _ = await edge.request(
        "POST",
        "/v1/orders",
        json={
            "lines": [{"sku": sku, "quantity": 1}],
            "currency": "EUR",
            "payment": {"card_token": CARD_NUMBER},
        },
        headers={**bearer(rotated["access_token"]), "Idempotency-Key": f"sec-{uuid.uuid4()}"},
    )
    assert status == 422
    crossed["order with a card number as its token"] = (edge.trace_id, {"gateway"})
    order = await place_order(edge, rotated["access_token"], sku)
    crossed["order paid by card"] = (
        edge.trace_id,
        {"gateway", "orders", "catalog", "inventory", "payments"},
    )
    assert (await final_order(edge, rotated["access_token"], order["order_id"]))["status"] == (
        "COMPLETED"
    )
    status, _ = await edge.request(
        "POST", "/v1/auth/signout", headers=bearer(admin["access_token"])
    )
    assert status == 204

    secrets = {
        "customer password": password,
        "wrong password": wrong,
        "admin password": admin["password"],
        "api client secret": client["client_secret"],
        "client credentials token": machine["access_token"],
        "access token": someone["access_token"],
        "rotated access token": rotated["access_token"],
        "refresh token": someone["refresh_token"],
        "rotated refresh token": rotated["refresh_token"],
        "admin access token": admin["access_token"],
        "admin refresh token": admin["refresh_token"],
        "card number": CARD_NUMBER,
    }
    # The flow's traces are in Jaeger, each with the spans of every service it crossed
    # (exporters send in batches): what is grepped below holds the flow's data.
    places: dict[str, str] = {}
    for name, (trace_id, expected) in crossed.items():
        assert trace_id, f"no X-Trace-Id on the answer to the {name}"

        async def exported(trace_id: str = trace_id, expected: set[str] = expected) -> Any:
            trace = await asyncio.to_thread(jaeger_trace, settings, trace_id)
            return trace if expected <= set(services_of(trace)) else None

        trace = await eventually(
            exported, within=90, what=f"the {name}'s trace from {sorted(expected)} in Jaeger"
        )
        places[f"jaeger trace of the {name}"] = json.dumps(trace)
    for name, text in (await asyncio.to_thread(jaeger_traces, settings)).items():
        places[f"jaeger traces of {name}"] = text
    logs = await asyncio.to_thread(log_files, settings.state_dir / "logs")
    # ... and so do the logs (each line carries its trace id): the gateway's access line
    # of every request of the flow, the saga's activity lines of the order.
    for name, (trace_id, _) in crossed.items():
        assert trace_id in logs[f"log {GATEWAY_LOG}"], f"the {name} is not in the gateway's log"
    order_trace = crossed["order paid by card"][0]
    for service in ("orders", "inventory", "payments"):
        log = f"log test-svc-{service}.log"
        assert order_trace in logs[log], f"the order's activities are not in {service}'s log"
    places.update(logs)
    # The flow's success answers legitimately carry its tokens and the client secret
    # (once): only error bodies are checked for those.
    error_bodies = [b for b in edge.bodies if '"type": "https://agora.dev/problems/' in b]
    assert len(error_bodies) >= 4, "the wrong password, bad sign-in, account and order answers"
    places["answer bodies"] = "\n".join(error_bodies)
    leaks = [
        f"{secret} in {place}"
        for secret, value in secrets.items()
        for place, text in places.items()
        if value in text
    ]
    assert not leaks, leaks


# Injection and oversized values -----------------------------------------------------------


def quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# Refused by a handler, not before one: every route is sent the admin's token, which
# reaches it, so a 401 or 403 (a lost scope, a revoked session) would pass every probe
# without one of them reaching a handler or its SQL.
REFUSED = frozenset(range(400, 500)) - {401, 403}
# Rows no saga still moves, by database, table and key: an injected UPDATE or DELETE
# would change them. Orders in flight (other tests' leftovers) are left out.
SETTLED_ROWS = (
    (
        "orders",
        "orders",
        "order_id",
        "status IN ('COMPLETED', 'CANCELLED', 'REJECTED', 'REFUNDED')",
    ),
    ("catalog", "products", "sku", "true"),
    ("identity", "accounts", "account_id", "true"),
)


async def settled_keys(settings: Settings) -> dict[str, list[Any]]:
    keys = {}
    for database, table, key, settled in SETTLED_ROWS:
        conn = await asyncpg.connect(settings.db_dsn(database))
        try:
            rows = await conn.fetch(f"SELECT {key} AS key FROM {table} WHERE {settled}")
        finally:
            await conn.close()
        keys[table] = [r["key"] for r in rows]
    return keys


async def checksums(settings: Settings, keys: dict[str, list[Any]]) -> dict[str, tuple[int, str]]:
    """Per table: how many of `keys` are still there, and an md5 of those rows."""
    sums = {}
    for database, table, key, _ in SETTLED_ROWS:
        conn = await asyncpg.connect(settings.db_dsn(database))
        try:
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, md5(string_agg(t::text, ',' ORDER BY {key})) AS sum"
                f" FROM {table} t WHERE {key} = ANY($1)",
                keys[table],
            )
        finally:
            await conn.close()
        sums[table] = (row["n"], row["sum"])
    return sums


async def test_injection_strings_and_oversized_values_are_harmless(
    settings: Settings, edge: Edge
) -> None:
    admin = await admin_session(edge, settings)
    token = admin["access_token"]  # every scope: every route is reached
    sku = await stocked_product(edge, token)
    who = await customer(edge, f"pw-{uuid.uuid4().hex}")
    # `order` is cancelled below (a cancel's reason is free text); `kept` is untouched.
    order = await place_order(edge, who["access_token"], sku)
    kept = await place_order(edge, who["access_token"], sku)
    for placed in (order, kept):
        finished = await final_order(edge, who["access_token"], placed["order_id"])
        assert finished["status"] == "COMPLETED"
    keys = await settled_keys(settings)
    keys["orders"].remove(uuid.UUID(order["order_id"]))
    assert uuid.UUID(kept["order_id"]) in keys["orders"]
    assert sku in keys["products"] and uuid.UUID(who["account_id"]) in keys["accounts"]
    before = await checksums(settings, keys)

    unexpected: list[tuple[str, int, Any]] = []

    async def send(
        method: str,
        path: str,
        *,
        expect: Container[int] = REFUSED,
        extra: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        headers = {**bearer(token), **(extra or {})}
        status, body = await edge.request(method, path, headers=headers, **kwargs)
        if status not in expect:
            unexpected.append((f"{method} {path[:80]}", status, str(body)[:200]))
        return status, body

    for value in [*INJECTIONS, "é" * 2000]:
        q = quoted(value)
        # Path parameters.
        for path in (
            f"/v1/products/{q}",
            f"/v1/inventory/{q}",
            f"/v1/orders/{q}",
            f"/v1/admin/payments/{q}",
            f"/v1/admin/imports/{q}",
            f"/v1/audit/orders/{q}/export",
        ):
            await send("GET", path)
        for path in (f"/v1/orders/{q}/cancel", f"/v1/orders/{q}/payment"):
            await send(
                "POST", path, json={"card_token": "tok_12345678"} if "payment" in path else {}
            )
        await send("DELETE", f"/v1/admin/api-clients/{q}")
        await send("DELETE", f"/v1/admin/products/{q}")
        # Query parameters: a search or a lookup by key may find nothing (200), and
        # nothing it must be (a condition an injection rewrote would match rows).
        for path in (
            f"/v1/products?category={q}",
            f"/v1/products?category=tests&cursor={q}",
            f"/v1/orders?cursor={q}",
            f"/v1/audit/events?cursor={q}",
            f"/v1/audit/events?trace_id={q}",
            f"/v1/admin/api-clients?cursor={q}",
        ):
            await send("GET", path)
        for path in (f"/v1/search?q={q}", f"/v1/search?q=x&brand={q}"):
            await send("GET", path, expect=(200, *REFUSED))
        for path, found in (
            (f"/v1/products?sku={q}", "products"),
            (f"/v1/audit/events?aggregate_type=order&aggregate_id={q}", "events"),
        ):
            status, body = await send("GET", path, expect=(200, *REFUSED))
            assert status != 200 or body[found] == [], (path, body)
        # JSON fields.
        # An address is only loosely checked ("%00@example.com" is one) and a display
        # name is free text: an account may be made, holding exactly what was sent.
        status, account = await send(
            "POST",
            "/v1/accounts",
            expect=(201, *REFUSED),
            json={"email": f"{value}@example.com", "password": value * 10, "display_name": value},
        )
        assert status != 201 or (
            account["email"] == f"{value}@example.com" and account["display_name"] == value
        ), account
        await send(
            "POST",
            "/v1/auth/signin",
            expect=(401, *REFUSED),
            json={"email": value, "password": value},
        )
        await send(
            "POST",
            "/v1/admin/products",
            json={
                "sku": value,
                "title": value,
                "description": value,
                "brand": value,
                "category": value,
                "attributes": {value: value},
                "price": {"amount_minor": 1, "currency": "EUR"},
            },
        )
        # A reason is free text: the first cancel refunds the order, the next find it
        # cancelled (409) or refuse the value.
        await send(
            "POST",
            f"/v1/orders/{order['order_id']}/cancel",
            expect=(200, 202, *REFUSED),
            json={"reason": value[:500]},
        )
        await send(
            "POST",
            "/v1/orders",
            json={
                "lines": [{"sku": value, "quantity": 1}],
                "currency": "EUR",
                "payment": {"card_token": value},
            },
            extra={"Idempotency-Key": f"inj-{uuid.uuid4()}"},
        )
        # A client's name is free text too: kept as given, never run.
        status, client = await send(
            "POST",
            "/v1/admin/api-clients",
            expect=(201, *REFUSED),
            json={"name": value, "scopes": ["profile"]},
        )
        assert status != 201 or client["name"] == value, client

    # A 1 MiB string in a JSON field is refused by size, before any parsing.
    for path, body in (
        ("/v1/accounts", {"email": "a@b.cd", "password": MEGABYTE, "display_name": "x"}),
        ("/v1/admin/products", {"sku": "X", "title": MEGABYTE}),
        (f"/v1/orders/{order['order_id']}/cancel", {"reason": MEGABYTE}),
    ):
        await send("POST", path, expect=(413,), json=body)
    # A 1 MiB path or query never reaches a handler (the HTTP parser's line limit).
    for path in (f"/v1/products/{MEGABYTE}", f"/v1/search?q={MEGABYTE}"):
        await send("GET", path)
    assert not unexpected, "\n".join(map(str, unexpected))

    # Nothing was dropped or rewritten: the settled rows are there, byte for byte.
    assert await checksums(settings, keys) == before
    status, mine = await edge.request(
        "GET", f"/v1/orders/{kept['order_id']}", headers=bearer(who["access_token"])
    )
    assert status == 200 and mine["status"] == "COMPLETED"
    status, product = await edge.request("GET", f"/v1/products/{sku}", headers=bearer(token))
    assert status == 200 and product["sku"] == sku


# One customer's token never reaches another's data ----------------------------------------


async def test_a_customers_token_never_reaches_another_customers_data(
    settings: Settings, edge: Edge
) -> None:
    admin = await admin_session(edge, settings)
    sku = await stocked_product(edge, admin["access_token"])
    ann = await customer(edge, f"pw-{uuid.uuid4().hex}")
    bob = await customer(edge, f"pw-{uuid.uuid4().hex}")
    order = await place_order(edge, ann["access_token"], sku)
    assert (await final_order(edge, ann["access_token"], order["order_id"]))["status"] == (
        "COMPLETED"
    )
    path = f"/v1/orders/{order['order_id']}"
    as_bob = bearer(bob["access_token"])
    refund_headers = {**as_bob, "Idempotency-Key": f"bob-{uuid.uuid4()}"}

    # Bob cannot see it: one answer for "not yours" and "does not exist".
    status, body = await edge.request("GET", path, headers=as_bob)
    assert (status, body["type"]) == (404, "https://agora.dev/problems/not-found"), body
    status, listed = await edge.request("GET", "/v1/orders?limit=100", headers=as_bob)
    assert status == 200 and all(o["order_id"] != order["order_id"] for o in listed["orders"])
    # ... nor act on it.
    for action, kwargs in (
        ("cancel", {"json": {"reason": "not mine"}, "headers": as_bob}),
        ("refunds", {"json": {"amount_minor": 1}, "headers": refund_headers}),
        (
            "payment",
            {"json": {"card_token": tokenize(CARD_NUMBER, 12, 2030).token}, "headers": as_bob},
        ),
    ):
        status, body = await edge.request("POST", f"{path}/{action}", **kwargs)
        assert status == 404, (action, body)
    # /v1/me is always the caller, whatever else the request carries.
    status, me = await edge.request("GET", "/v1/me", headers=as_bob)
    assert status == 200 and me["subject"] == bob["account_id"]
    status, _ = await edge.request("GET", f"/v1/me?account_id={ann['account_id']}", headers=as_bob)
    assert status == 422

    # Ann's order is untouched: completed, nothing refunded, still hers.
    status, mine = await edge.request("GET", path, headers=bearer(ann["access_token"]))
    assert status == 200
    assert (mine["status"], mine["refunded_minor"]) == ("COMPLETED", 0)


# Cursors through the edge -------------------------------------------------------------------

CURSOR_ROUTES = (
    "/v1/orders?cursor={c}",
    "/v1/products?category=tests&cursor={c}",
    "/v1/search?q=shoe&cursor={c}",
    "/v1/audit/events?cursor={c}",
    "/v1/admin/api-clients?cursor={c}",
)


def b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Near-misses of every service's cursor format: right encoding, wrong content.
CURSOR_VALUES = st.one_of(
    st.text(max_size=100),
    st.binary(max_size=90).map(b64),
    st.sampled_from(
        [
            b64(b'["0001-01-01T00:00:00+14:00", "00000000-0000-0000-0000-000000000000"]'),
            b64(b'["9999-12-31T23:59:59-14:00", "00000000-0000-0000-0000-000000000000"]'),
            b64(b'["2020-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]'),
            b64(b"seq:99999999999999999999"),
            b64(b"seq:-1"),
            b64(b'{"d": "x", "a": [1, 2]}'),
            b64(b'["tests", "\\u0000"]'),
            b64(b"0001-01-01T00:00:00+14:00|00000000-0000-0000-0000-000000000000"),
        ]
    ),
)


async def test_any_cursor_on_any_paged_route_is_a_page_or_a_4xx(
    settings: Settings, edge: Edge
) -> None:
    admin = await admin_session(edge, settings)
    headers = bearer(admin["access_token"])
    seen: list[tuple[str, int]] = []

    @settings_for_cursors
    @given(route=st.sampled_from(CURSOR_ROUTES), cursor=CURSOR_VALUES)
    def probe(route: str, cursor: str) -> None:
        path = route.format(c=urllib.parse.quote(cursor, safe=""))
        status, body = asyncio.run_coroutine_threadsafe(
            edge.request("GET", path, headers=headers), loop
        ).result(60)
        seen.append((route, status))
        # Answered by the route, not refused before it (the token reaches every one).
        assert status < 500 and status not in (401, 403), (path, status, body)

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(probe)
    assert {route for route, _ in seen} == set(CURSOR_ROUTES)


settings_for_cursors = settings(max_examples=60, derandomize=True, database=None, deadline=None)
