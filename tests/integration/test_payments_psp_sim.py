"""The simulated PSP on the real test Redis (`RedisSimStore`): an operation and the
money it moves are stored in one step, so neither a lost answer nor a concurrent
operation on the same authorization leaves its totals behind the receipts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agora.config import Settings
from tests.unit.test_payments_psp_sim import capture_twice_at_once, losing_the_answer_to
from workers.payments.psp import PspRejected
from workers.payments.psp_sim import RedisSimStore, SimulatedPsp, tokenize

pytestmark = pytest.mark.integration

# The largest amount payments accepts: the store must keep it an exact integer.
MAX_AMOUNT = 10**15


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[RedisSimStore]:
    client = aioredis.from_url(settings.redis_url, password=settings.redis_password or None)
    prefix = f"test-psp-sim-{uuid.uuid4().hex[:8]}:"
    yield RedisSimStore(client, prefix)
    async for name in client.scan_iter(match=f"{prefix}*"):
        await client.delete(name)
    await client.aclose()


async def authorized(psp: SimulatedPsp, amount_minor: int) -> str:
    payment_id = str(uuid.uuid4())
    card = tokenize("4242424242424242", 12, 2099).token
    await psp.authorize(key=payment_id, card_token=card, amount_minor=amount_minor, currency="EUR")
    return payment_id


async def test_a_capture_answer_lost_after_its_claim_is_captured_once_and_refundable(
    store: RedisSimStore,
) -> None:
    psp = SimulatedPsp(store)
    payment_id = await authorized(psp, MAX_AMOUNT)
    failing = losing_the_answer_to(store, "op:capture:k")
    capture = {"key": "capture:k", "authorization_key": payment_id, "currency": "EUR"}
    with pytest.raises(ConnectionError):
        await failing.capture(**capture, amount_minor=MAX_AMOUNT)
    first = await failing.capture(**capture, amount_minor=MAX_AMOUNT)
    assert await psp.capture(**capture, amount_minor=MAX_AMOUNT) == first
    auth = await store.get(f"auth:{payment_id}") or {}
    assert auth["captured_minor"] == MAX_AMOUNT
    await psp.refund(
        key="refund:r", authorization_key=payment_id, amount_minor=MAX_AMOUNT, currency="EUR"
    )
    assert (await store.get(f"auth:{payment_id}") or {})["refunded_minor"] == MAX_AMOUNT


async def test_two_captures_cannot_both_take_the_rest_of_an_authorization(
    store: RedisSimStore,
) -> None:
    psp = SimulatedPsp(store)
    payment_id = await authorized(psp, 1000)
    results = await capture_twice_at_once(store, payment_id)
    assert sorted(type(r).__name__ for r in results) == ["PspRejected", "Receipt"]
    assert (await store.get(f"auth:{payment_id}") or {})["captured_minor"] == 600
    with pytest.raises(PspRejected):
        await psp.capture(
            key="capture:c", authorization_key=payment_id, amount_minor=401, currency="EUR"
        )
