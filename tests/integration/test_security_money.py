"""Money properties against the real stores: refund and capture limits, totals of lines.

hypothesis draws histories of captures, voids and refunds (amounts within and
beyond the limits) and runs them through the payments service's own code
(`PaymentIntents` on the payments database, with the simulated PSP on Redis): what
exceeds the limits is refused and changes nothing, and afterwards the intent's
part of the ledger nets to zero and matches its amounts. Catalog's PriceLines
(what the order saga prices with) always totals to the sum of its lines.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from agora.config import Settings
from agora.errors import DomainError
from agora.grpc import Channels
from contracts.agora.catalog.v1 import CatalogServiceStub, PriceLinesRequest
from contracts.agora.common.v1 import LineItem
from tests.integration.catalogkit import CatalogApi
from tests.integration.conftest import Services
from tests.integration.gatewaykit import TokenMinter, running_gateway
from workers.payments import ledger
from workers.payments.intents import PaymentIntents
from workers.payments.psp_sim import RedisSimStore, SimulatedPsp, tokenize
from workflows.payments import AuthorizeInput, CaptureInput, RefundInput, VoidInput

pytestmark = pytest.mark.integration

HISTORIES = settings(max_examples=30, derandomize=True, database=None, deadline=None)
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["capture", "void", "refund"]),
        st.integers(min_value=1, max_value=3000),
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture(scope="module")
async def intents(settings: Settings, services: Services) -> AsyncIterator[PaymentIntents]:
    services("payments")  # its migrations made the schema
    pool = await asyncpg.create_pool(settings.db_dsn("payments"), min_size=1, max_size=2)
    # The simulated PSP keeps its state in Redis, as in the running service.
    redis = aioredis.from_url(settings.redis_url)
    try:
        yield PaymentIntents(pool, SimulatedPsp(RedisSimStore(redis)))
    finally:
        await redis.aclose()
        await pool.close()


async def run_history(intents: PaymentIntents, authorized: int, steps: list) -> None:
    key = f"prop-{uuid.uuid4()}"
    result = await intents.authorize(
        AuthorizeInput(
            idempotency_key=key,
            order_id=str(uuid.uuid4()),
            amount_minor=authorized,
            currency="EUR",
            card_token=tokenize("4242424242424242", 12, 2030).token,
        )
    )
    payment_id = result.payment_id
    captured = released = refunded = 0
    for n, (kind, amount) in enumerate(steps):
        step_key = f"{key}-{n}"
        open_minor = authorized - captured - released
        try:
            if kind == "capture":
                await intents.capture(CaptureInput(step_key, payment_id, amount))
                assert amount <= open_minor, "a capture beyond the open hold was accepted"
                captured += amount
            elif kind == "void":
                await intents.void(VoidInput(step_key, payment_id))
                released += open_minor
            else:
                await intents.refund(RefundInput(step_key, payment_id, amount))
                assert amount <= captured - refunded, "a refund beyond the captured was accepted"
                refunded += amount
        except DomainError:
            # Refused: only what breaks a limit (or has nothing to act on) may be.
            if kind == "capture":
                assert amount > open_minor or open_minor == 0
            elif kind == "refund":
                assert amount > captured - refunded or captured == refunded
            else:
                assert open_minor == 0
    async with intents.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT authorized_minor, captured_minor, released_minor, refunded_minor"
            " FROM payment_intents WHERE payment_id = $1",
            uuid.UUID(payment_id),
        )
        assert tuple(row) == (authorized, captured, released, refunded)
        report = await ledger.check(conn, payment_id=uuid.UUID(payment_id))
    assert report.balanced, report.problems


async def test_captures_and_refunds_never_exceed_their_limits_and_the_ledger_balances(
    intents: PaymentIntents,
) -> None:
    loop = asyncio.get_running_loop()

    @HISTORIES
    @given(authorized=st.integers(min_value=1, max_value=5000), steps=STEPS)
    def history(authorized: int, steps: list) -> None:
        asyncio.run_coroutine_threadsafe(run_history(intents, authorized, steps), loop).result(60)

    await asyncio.to_thread(history)


@pytest.fixture(scope="module")
async def priced_skus(settings: Settings, services: Services) -> AsyncIterator[dict[str, int]]:
    services("catalog")
    services("identity")
    minter = TokenMinter(settings)
    prices = {f"MNY-{uuid.uuid4().hex[:8]}": p for p in (1, 999, 123_456, 10**12)}
    async with running_gateway(settings, minter) as (_, client):
        catalog = CatalogApi(client, minter)
        for sku, price in prices.items():
            await catalog.create(sku=sku, price={"amount_minor": price, "currency": "EUR"})
    yield prices


async def test_an_orders_total_is_the_sum_of_its_priced_lines(
    settings: Settings, priced_skus: dict[str, int]
) -> None:
    channels = Channels(settings, caller="orders")
    stub = CatalogServiceStub(channels.get("catalog"))
    loop = asyncio.get_running_loop()

    async def price(lines: list[tuple[str, int]]) -> Any:
        return await stub.price_lines(
            PriceLinesRequest(
                lines=[LineItem(sku=s, quantity=q) for s, q in lines], currency="EUR"
            ),
            timeout=10,
        )

    @HISTORIES
    @given(
        st.lists(
            st.tuples(st.sampled_from(sorted(priced_skus)), st.integers(1, 100)),
            min_size=1,
            max_size=20,
        )
    )
    def totals(lines: list[tuple[str, int]]) -> None:
        reply = asyncio.run_coroutine_threadsafe(price(lines), loop).result(30)
        assert not reply.unavailable_skus
        assert [(line.sku, line.quantity) for line in reply.lines] == lines
        for line in reply.lines:
            assert line.unit_price.amount_minor == priced_skus[line.sku]
            assert line.line_total.amount_minor == line.unit_price.amount_minor * line.quantity
        assert reply.subtotal.amount_minor == sum(
            p * q for (s, q) in lines for p in [priced_skus[s]]
        )

    try:
        await asyncio.to_thread(totals)
    finally:
        channels.close()
