"""API clients: provisioning by an admin, and the signed requests every client must send.

A refused signed request reaches no service (the client's secret is cached
after its first verified request, so the check is one HMAC in the gateway).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from agora import signing
from agora.config import Settings
from gateway.app import secrets_from_identity
from gateway.deps import Gateway
from gateway.signatures import REFUSAL_TTL_S, SigningSecrets
from tests.integration.conftest import ServiceProcess
from tests.integration.gatewaykit import (
    PASSWORD,
    Api,
    bearer,
    no_upstream_call,
    problem,
    register_admin,
    running_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]


@pytest_asyncio.fixture(scope="session")
async def gateway(
    settings: Settings, identity: ServiceProcess | None
) -> AsyncIterator[tuple[Gateway, TestClient]]:
    async with running_gateway(settings) as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.db_dsn("identity"), min_size=1, max_size=2)
    assert pool is not None
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="session")
async def admin_token(gateway: tuple[Gateway, TestClient]) -> str:
    gw, client = gateway
    email = await register_admin(gw)
    return (await Api(client).sign_in(email))["access_token"]


async def create_client(api: Api, admin_token: str, scopes: list[str]) -> dict[str, Any]:
    response = await api.client.post(
        "/v1/admin/api-clients",
        json={"name": f"svc-{uuid.uuid4().hex[:6]}", "scopes": scopes},
        headers=bearer(admin_token),
    )
    assert response.status == 201, await response.text()
    # Its secret, shown this once, is kept out of caches (RFC 6749 §5.1).
    assert response.headers["Cache-Control"] == "no-store"
    return await response.json()


async def client_token(api: Api, client: dict[str, Any]) -> str:
    response = await api.client.post(
        "/v1/auth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert "refresh_token" not in body
    return body["access_token"]


@pytest_asyncio.fixture(scope="session")
async def machine(gateway: tuple[Gateway, TestClient], admin_token: str) -> dict[str, Any]:
    """An API client allowed to administer API clients, with a token and a warm secret cache."""
    api = Api(gateway[1])
    client = await create_client(api, admin_token, ["identity:admin", "profile"])
    token = await client_token(api, client)
    response = await api.signed("GET", "/v1/me", token, client["client_secret"])
    assert response.status == 200, await response.text()
    return {**client, "token": token}


async def every_client(fetch: Callable[[dict[str, str]], Awaitable[Any]]) -> list[dict[str, Any]]:
    """Every listed client, page after page: the list runs oldest first, and a long-lived
    test stack holds more clients than one page."""
    clients: list[dict[str, Any]] = []
    cursor = ""
    while True:
        response = await fetch(
            {"include_revoked": "true", "page_size": "100"} | ({"cursor": cursor} if cursor else {})
        )
        assert response.status == 200, await response.text()
        page = await response.json()
        clients += page["clients"]
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return clients


# Happy paths ----------------------------------------------------------------


async def test_admin_creates_a_client_whose_secret_is_shown_once(
    api: Api, admin_token: str
) -> None:
    client = await create_client(api, admin_token, ["catalog:read"])
    assert client["client_secret"] and client["scopes"] == ["catalog:read"]
    assert client["revoked"] is False
    clients = await every_client(
        lambda query: api.client.get(
            "/v1/admin/api-clients", params=query, headers=bearer(admin_token)
        )
    )
    mine = [c for c in clients if c["client_id"] == client["client_id"]]
    assert mine and "client_secret" not in mine[0]


async def test_signed_request_lists_and_revokes_clients(
    gw: Gateway, api: Api, admin_token: str, machine: dict[str, Any]
) -> None:
    victim = await create_client(api, admin_token, ["profile", "catalog:read"])
    victim_token = await client_token(api, victim)

    listed = await every_client(
        lambda query: api.signed(
            "GET", "/v1/admin/api-clients", machine["token"], machine["client_secret"], query=query
        )
    )
    assert any(c["client_id"] == victim["client_id"] for c in listed)

    path = f"/v1/admin/api-clients/{victim['client_id']}"
    revoked = await api.signed("DELETE", path, machine["token"], machine["client_secret"])
    assert revoked.status == 204, await revoked.text()

    # Its live token is dead at the edge (no secret lookup either), and it cannot get a new one.
    fetched = gw.secrets.fetches
    with no_upstream_call(gw):
        response = await api.signed("GET", "/v1/me", victim_token, victim["client_secret"])
        await problem(response, 401, "token-revoked")
    assert gw.secrets.fetches == fetched
    response = await api.client.post(
        "/v1/auth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": victim["client_id"],
            "client_secret": victim["client_secret"],
        },
    )
    await problem(response, 401, "invalid-credentials")


async def test_a_client_id_spelled_in_upper_case_signs_in_and_revokes_the_same_client(
    api: Api, admin_token: str
) -> None:
    victim = await create_client(api, admin_token, ["profile"])
    shouted = {**victim, "client_id": victim["client_id"].upper()}
    token = await client_token(api, shouted)  # was a 502: the secret did not open
    me = await api.signed("GET", "/v1/me", token, victim["client_secret"])
    assert me.status == 200, await me.text()
    revoked = await api.client.delete(
        f"/v1/admin/api-clients/{shouted['client_id']}", headers=bearer(admin_token)
    )
    assert revoked.status == 204, await revoked.text()
    # The token it held is dead: the revocation named the id its tokens carry.
    await problem(
        await api.signed("GET", "/v1/me", token, victim["client_secret"]), 401, "token-revoked"
    )
    not_an_id = await api.client.delete(
        "/v1/admin/api-clients/not-a-client", headers=bearer(admin_token)
    )
    await problem(not_an_id, 404, "not-found")


async def test_a_creation_retried_with_its_idempotency_key_answers_the_first_client_again(
    gateway: tuple[Gateway, TestClient], api: Api, db: asyncpg.Pool
) -> None:
    # A retry after a lost 201 minted a second client whose secret nobody received.
    email = await register_admin(gateway[0])
    admin_token = (await api.sign_in(email))["access_token"]
    key = f"create-{uuid.uuid4().hex}"
    body = {"name": f"svc-{uuid.uuid4().hex[:6]}", "scopes": ["profile"]}

    async def create(sent: dict[str, Any], with_key: str, token: str = admin_token) -> Any:
        headers = bearer(token) | {"Idempotency-Key": with_key}
        return await api.client.post("/v1/admin/api-clients", json=sent, headers=headers)

    first, second = await asyncio.gather(create(body, key), create(body, key))
    assert first.status == second.status == 201, await first.text()
    one, two = await first.json(), await second.json()
    assert one["client_id"] == two["client_id"]
    assert one["client_secret"] == two["client_secret"]
    assert second.headers["Cache-Control"] == "no-store"
    created = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = $2",
        one["client_id"],
        "identity.ApiClientCreated",
    )
    assert created == 1
    # The secret it answers again is the client's: it signs in.
    assert await client_token(api, two)

    other = await create(body | {"scopes": ["catalog:read"]}, key)
    await problem(other, 409, "conflict")
    # The key is the session's: the same admin's other session (the key read from a
    # log, say) gets a client of its own, not this one's secret.
    elsewhere = await create(body, key, (await api.sign_in(email))["access_token"])
    assert elsewhere.status == 201, await elsewhere.text()
    assert (await elsewhere.json())["client_id"] != one["client_id"]
    malformed = await create(body, "short")
    await problem(malformed, 400, "invalid-argument")


async def test_a_revoke_sent_twice_at_once_is_one_revoke_answered_twice(
    api: Api, admin_token: str
) -> None:
    # A double click, or a retry after a 504 while the first still runs: the second
    # DELETE joins the first's workflow (it was a 409 "already started"), and one sent
    # after it has ended reads its outcome.
    victim = await create_client(api, admin_token, ["profile"])
    path = f"/v1/admin/api-clients/{victim['client_id']}"
    first, second = await asyncio.gather(
        api.client.delete(path, headers=bearer(admin_token)),
        api.client.delete(path, headers=bearer(admin_token)),
    )
    assert (first.status, second.status) == (204, 204), (await first.text(), await second.text())
    again = await api.client.delete(path, headers=bearer(admin_token))
    assert again.status == 204, await again.text()
    token = api.client.post(
        "/v1/auth/token",
        json={
            "grant_type": "client_credentials",
            "client_id": victim["client_id"],
            "client_secret": victim["client_secret"],
        },
    )
    await problem(await token, 401, "invalid-credentials")


async def test_api_clients_cannot_create_api_clients(api: Api, machine: dict[str, Any]) -> None:
    body = json.dumps({"name": "child", "scopes": ["profile"]}).encode()
    response = await api.signed(
        "POST", "/v1/admin/api-clients", machine["token"], machine["client_secret"], body=body
    )
    await problem(response, 403, "permission-denied")


async def test_a_client_gets_no_scope_its_creators_token_lacks(gw: Gateway, api: Api) -> None:
    # An admin's token narrowed to administering clients cannot mint a client with
    # the admin's other scopes (or any the admin does not hold, such as support).
    narrowed = await api.client.post(
        "/v1/auth/signin",
        json={
            "email": await register_admin(gw),
            "password": PASSWORD,
            "scope": "identity:admin profile",
        },
    )
    assert narrowed.status == 200, await narrowed.text()
    token = (await narrowed.json())["access_token"]
    for wanted in (["admin", "audit:read"], ["support"]):
        with no_upstream_call(gw):
            response = await api.client.post(
                "/v1/admin/api-clients",
                json={"name": "wider", "scopes": wanted},
                headers=bearer(token),
            )
            body = await problem(response, 403, "permission-denied")
        assert wanted[0] in body["detail"]
    # Within the token's scopes it is allowed.
    assert (await create_client(api, token, ["profile"]))["scopes"] == ["profile"]


# Refusals -------------------------------------------------------------------


class Clock:
    """The secret cache's clock, moved by hand: expiries without waiting for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_disabled_owners_client_is_refused_as_a_client_with_one_lookup(
    gw: Gateway, api: Api, db: asyncpg.Pool
) -> None:
    owner_token = (await api.sign_in(await register_admin(gw)))["access_token"]
    client = await create_client(api, owner_token, ["profile"])
    token = await client_token(api, client)
    owner_id = uuid.UUID(client["owner_account_id"])
    clock, served_by = Clock(), gw.secrets
    gw.secrets = SigningSecrets(secrets_from_identity(gw.upstream.identity), clock=clock)
    try:
        await db.execute("UPDATE accounts SET disabled = true WHERE account_id = $1", owner_id)
        # Not a bad signature (it is right): its token is no good, and one lookup
        # answers every request until the refusal expires.
        for _ in range(2):
            with no_upstream_call(gw):
                response = await api.signed("GET", "/v1/me", token, client["client_secret"])
                body = await problem(response, 401, "token-revoked")
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], body
        assert gw.secrets.fetches == 1

        await db.execute("UPDATE accounts SET disabled = false WHERE account_id = $1", owner_id)
        clock.now += REFUSAL_TTL_S
        response = await api.signed("GET", "/v1/me", token, client["client_secret"])
        assert response.status == 200, await response.text()
    finally:
        gw.secrets = served_by
        await db.execute("UPDATE accounts SET disabled = false WHERE account_id = $1", owner_id)


async def test_unsigned_request_from_an_api_client(
    gw: Gateway, api: Api, machine: dict[str, Any]
) -> None:
    with no_upstream_call(gw):
        response = await api.client.get("/v1/me", headers=bearer(machine["token"]))
        await problem(response, 401, "signature-required")


async def test_bad_signature(gw: Gateway, api: Api, machine: dict[str, Any]) -> None:
    with no_upstream_call(gw):
        response = await api.signed("GET", "/v1/admin/api-clients", machine["token"], "wrong")
        await problem(response, 401, "signature-invalid")


async def test_stale_timestamp(gw: Gateway, api: Api, machine: dict[str, Any]) -> None:
    # Clear of the limit by far more than a second: the header is whole seconds, the
    # server's clock is not, and the request takes its time too.
    # The documented window (docs/gateway.md: ±300 s), not the module's own figure.
    for skew in (-330, 330):
        with no_upstream_call(gw):
            response = await api.signed(
                "GET",
                "/v1/admin/api-clients",
                machine["token"],
                machine["client_secret"],
                timestamp=int(time.time()) + skew,
            )
            await problem(response, 401, "signature-stale")


async def test_replayed_nonce(gw: Gateway, api: Api, machine: dict[str, Any]) -> None:
    nonce = signing.new_nonce()
    first = await api.signed(
        "GET", "/v1/me", machine["token"], machine["client_secret"], nonce=nonce
    )
    assert first.status == 200
    with no_upstream_call(gw):
        replay = await api.signed(
            "GET", "/v1/me", machine["token"], machine["client_secret"], nonce=nonce
        )
        await problem(replay, 401, "nonce-replayed")


async def test_a_nonce_refused_429_is_spent_too(
    gw: Gateway, api: Api, machine: dict[str, Any]
) -> None:
    # Spent only by an admitted request, a captured signed request refused 429 could
    # be sent again within the clock window (with another Idempotency-Key, which the
    # signature does not cover).
    subject = json.loads(base64.urlsafe_b64decode(machine["token"].split(".")[1] + "=="))["sub"]
    bucket = f"gateway:rl:read:{subject}"  # /v1/me's route class
    full_for_an_hour = (time.time() + 3600) * 1_000_000
    await gw.redis.set(bucket, int(full_for_an_hour), ex=3600)
    nonce = signing.new_nonce()
    try:
        refused = await api.signed(
            "GET", "/v1/me", machine["token"], machine["client_secret"], nonce=nonce
        )
        await problem(refused, 429, "rate-limited")
    finally:
        await gw.redis.delete(bucket)
    with no_upstream_call(gw):
        replay = await api.signed(
            "GET", "/v1/me", machine["token"], machine["client_secret"], nonce=nonce
        )
        await problem(replay, 401, "nonce-replayed")


async def test_body_changed_after_signing(gw: Gateway, api: Api, machine: dict[str, Any]) -> None:
    signed_body = json.dumps({"name": "a", "scopes": ["profile"]}).encode()
    sent_body = json.dumps({"name": "b", "scopes": ["profile"]}).encode()
    headers = {
        **bearer(machine["token"]),
        **signing.sign_headers(
            machine["client_secret"], "POST", "/v1/admin/api-clients", body=signed_body
        ),
        "Content-Type": "application/json",
    }
    with no_upstream_call(gw):
        response = await api.client.post("/v1/admin/api-clients", data=sent_body, headers=headers)
        await problem(response, 401, "signature-invalid")


async def test_query_changed_after_signing(gw: Gateway, api: Api, machine: dict[str, Any]) -> None:
    headers = {
        **bearer(machine["token"]),
        **signing.sign_headers(
            machine["client_secret"],
            "GET",
            "/v1/admin/api-clients",
            [("include_revoked", "false")],
        ),
    }
    with no_upstream_call(gw):
        response = await api.client.get(
            "/v1/admin/api-clients", params={"include_revoked": "true"}, headers=headers
        )
        await problem(response, 401, "signature-invalid")


async def test_a_repeated_query_parameter_is_refused_not_read_as_its_first_value(
    gw: Gateway, api: Api, machine: dict[str, Any]
) -> None:
    # The signature covers the values sorted (`false`, `true` either way round), so
    # the first value read would be the sender's choice, not what was signed.
    signed = [("include_revoked", "false"), ("include_revoked", "true")]
    headers = {
        **bearer(machine["token"]),
        **signing.sign_headers(machine["client_secret"], "GET", "/v1/admin/api-clients", signed),
    }
    with no_upstream_call(gw):
        response = await api.client.get(
            "/v1/admin/api-clients", params=list(reversed(signed)), headers=headers
        )
        body = await problem(response, 400, "invalid-argument")
    assert "include_revoked" in body["detail"]


async def test_malformed_nonce(gw: Gateway, api: Api, machine: dict[str, Any]) -> None:
    with no_upstream_call(gw):
        response = await api.signed(
            "GET", "/v1/me", machine["token"], machine["client_secret"], nonce="short"
        )
        await problem(response, 401, "signature-invalid")


async def test_refused_signature_headers_and_replays_are_charged_to_the_sender_s_address(
    gw: Gateway, api: Api, machine: dict[str, Any]
) -> None:
    # Refused before any bucket paid: a captured request replayed, or a client token sent
    # with no signature, was never rate limited.
    nonce = signing.new_nonce()
    first = await api.signed(
        "GET", "/v1/me", machine["token"], machine["client_secret"], nonce=nonce
    )
    assert first.status == 200
    bucket = "gateway:rl:read:ip:127.0.0.1"  # /v1/me's route class, the test client's
    full_for_an_hour = (time.time() + 3600) * 1_000_000
    await gw.redis.set(bucket, int(full_for_an_hour), ex=3600)
    try:
        with no_upstream_call(gw):
            replay = await api.signed(
                "GET", "/v1/me", machine["token"], machine["client_secret"], nonce=nonce
            )
            await problem(replay, 429, "rate-limited")
            unsigned = await api.client.get("/v1/me", headers=bearer(machine["token"]))
            await problem(unsigned, 429, "rate-limited")
    finally:
        await gw.redis.delete(bucket)
    unsigned = await api.client.get("/v1/me", headers=bearer(machine["token"]))
    await problem(unsigned, 401, "signature-required")
