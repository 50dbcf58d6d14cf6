"""Payments' admin reads through the gateway: a payment and the ledger check, admins only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from agora import db
from agora.config import Settings
from gateway.deps import Gateway
from tests.integration.conftest import ServiceProcess, Services
from tests.integration.gatewaykit import TokenMinter, bearer, problem, running_gateway
from workers.payments.errors import IdempotencyKeyConflict
from workers.payments.intents import PaymentIntents
from workers.payments.model import AuthorizeInput, CaptureInput, payment_id_for
from workers.payments.psp_sim import RedisSimStore, SimulatedPsp, tokenize

Client = TestClient[web.Request, web.Application]

pytestmark = [
    pytest.mark.integration,
    # RFC 9864 deprecates the "EdDSA" name; the platform contract still uses it.
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]


@pytest.fixture(scope="module")
def payments_service(services: Services) -> ServiceProcess:
    services("identity")  # the gateway's keys
    return services("payments")


@pytest.fixture(scope="module")
async def client(
    settings: Settings, payments_service: ServiceProcess, minter: TokenMinter
) -> AsyncIterator[Client]:
    gateway: tuple[Gateway, Client]
    async with running_gateway(settings, minter) as gateway:
        yield gateway[1]


@pytest.fixture(scope="module")
async def intents(
    settings: Settings, payments_service: ServiceProcess
) -> AsyncIterator[PaymentIntents]:
    """Payments' write side in-process on its real database and PSP store (payments migrated it)."""
    pool: asyncpg.Pool = await db.create_pool(settings, "payments", size=2)
    redis = aioredis.from_url(settings.redis_url)
    yield PaymentIntents(pool, SimulatedPsp(RedisSimStore(redis)))
    await redis.aclose()
    await pool.close()


def admin(minter: TokenMinter) -> dict[str, str]:
    return bearer(minter.token(scope="profile admin"))


async def test_an_admin_reads_a_payment_with_only_its_last_four_digits(
    client: Client, minter: TokenMinter, intents: PaymentIntents
) -> None:
    key = f"gw-{uuid.uuid4().hex}"
    token = tokenize("4242424242424242", 12, 2030).token
    auth = await intents.authorize(AuthorizeInput(key, "order-gw-1", 1500, "EUR", token))
    await intents.capture(CaptureInput(f"{key}:cap", auth.payment_id, 500))
    response = await client.get(f"/v1/admin/payments/{auth.payment_id}", headers=admin(minter))
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "partially_captured"
    assert body["authorized"] == {"amount_minor": 1500, "currency": "EUR"}
    assert body["captured"]["amount_minor"] == 500
    assert (body["card_brand"], body["card_last4"]) == ("visa", "4242")
    assert "4242424242424242" not in await response.text()


async def test_the_ledger_balance_is_checked_through_the_gateway(
    client: Client, minter: TokenMinter, intents: PaymentIntents
) -> None:
    token = tokenize("4242424242424242", 12, 2030).token
    await intents.authorize(
        AuthorizeInput(f"gw-{uuid.uuid4().hex}", "order-gw-2", 700, "EUR", token)
    )
    response = await client.get(
        "/v1/admin/ledger/balance", params={"currency": "EUR"}, headers=admin(minter)
    )
    assert response.status == 200
    body = await response.json()
    assert body["balanced"] is True
    assert body["problems"] == []
    assert body["net_by_currency"] == [{"amount_minor": 0, "currency": "EUR"}]
    assert body["entry_count"] >= 2


async def test_a_customer_cannot_read_payments(client: Client, minter: TokenMinter) -> None:
    customer = bearer(minter.token(scope="profile orders:read orders:write"))
    response = await client.get(f"/v1/admin/payments/{uuid.uuid4()}", headers=customer)
    await problem(response, 403, "insufficient-scope")
    response = await client.get("/v1/admin/ledger/balance", headers=customer)
    await problem(response, 403, "insufficient-scope")


async def test_an_unknown_payment_is_not_found_and_a_malformed_id_invalid(
    client: Client, minter: TokenMinter
) -> None:
    response = await client.get(f"/v1/admin/payments/{uuid.uuid4()}", headers=admin(minter))
    await problem(response, 404, "not-found")
    response = await client.get("/v1/admin/payments/not-a-uuid", headers=admin(minter))
    await problem(response, 400, "invalid-argument")


async def test_the_same_key_with_other_parameters_is_refused_while_the_first_is_at_the_psp(
    intents: PaymentIntents,
) -> None:
    # The first attempt waits at a slow PSP with nothing recorded yet; a second with
    # the key but another amount would get the first's authorization from the PSP and
    # book its own amount. It is refused before it reaches the PSP.
    assert isinstance(intents.psp, SimulatedPsp)
    slow = PaymentIntents(intents.pool, SimulatedPsp(intents.psp.store, slow_delay_s=60))
    key = f"gw-{uuid.uuid4().hex}"
    token = tokenize("4000000000000077", 12, 2030).token
    first = asyncio.create_task(
        slow.authorize(AuthorizeInput(key, "order-gw-2", 1000, "EUR", token))
    )
    try:
        payment_id = uuid.UUID(payment_id_for(key))
        for _ in range(100):
            if await intents.pool.fetchval(
                "SELECT status FROM payment_intents WHERE payment_id = $1", payment_id
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the first attempt never reached the PSP")
        with pytest.raises(IdempotencyKeyConflict):
            await slow.authorize(AuthorizeInput(key, "order-gw-2", 1200, "EUR", token))
        assert not first.done()
    finally:
        first.cancel()
