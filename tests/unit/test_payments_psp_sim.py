"""The simulated PSP: test cards, tokens without card numbers, and its own idempotency."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from gateway.schemas_orders import PaymentRequest
from workers.payments import psp_sim
from workers.payments.psp import (
    ActionRequired,
    Authorized,
    Declined,
    InvalidCardToken,
    PspKeyReused,
    PspRejected,
    PspTransientError,
)
from workers.payments.psp_sim import MemorySimStore, SimStore, SimulatedPsp, tokenize

TODAY = dt.date(2026, 1, 15)


def token(pan: str, *, exp: tuple[int, int] = (12, 2030)) -> str:
    return tokenize(pan, exp[0], exp[1], today=TODAY).token


@pytest.fixture
def store() -> MemorySimStore:
    return MemorySimStore()


@pytest.fixture
def psp(store: MemorySimStore) -> SimulatedPsp:
    return SimulatedPsp(store, slow_delay_s=0.2, flaky_failures=2)


def test_a_token_never_holds_a_nonce_the_gateway_would_take_for_a_card_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 16 hex digits can all be decimal and Luhn-valid: the gateway refuses a token
    # holding such a run (gateway/schemas_orders.py), so the tokenizer draws again.
    nonces = iter(["4242424242424242", "00c0ffee00c0ffee"])
    monkeypatch.setattr(psp_sim.secrets, "token_hex", lambda n: next(nonces))
    card = tokenize("4242 4242 4242 4242", 12, 2030, today=TODAY)
    assert card.token.endswith("_00c0ffee00c0ffee")
    assert PaymentRequest.model_validate({"card_token": card.token}).card_token == card.token


def test_a_token_holds_the_brand_and_last_four_but_never_the_number() -> None:
    card = tokenize("4242 4242 4242 4242", 12, 2030, today=TODAY)
    assert (card.brand, card.last4) == ("visa", "4242")
    assert "4242424242424242" not in card.token
    assert tokenize("4242424242424242", 12, 2030, today=TODAY).token != card.token


# "²" and "٤" are digits to str.isdigit() but not to int(): refused, not a crash.
@pytest.mark.parametrize(
    "pan", ["4242424242424241", "1234", "not a card", "424242424242424²", "٤242424242424242"]
)
def test_tokenizing_an_invalid_number_fails_without_repeating_it(pan: str) -> None:
    with pytest.raises(InvalidCardToken) as caught:
        tokenize(pan, 12, 2030, today=TODAY)
    assert pan not in str(caught.value)


def test_a_card_number_is_not_a_token(psp: SimulatedPsp) -> None:
    with pytest.raises(InvalidCardToken) as caught:
        psp.card("4242424242424242")
    assert "4242" not in str(caught.value)


async def test_success_card_authorizes(psp: SimulatedPsp) -> None:
    outcome = await psp.authorize(
        key="p1", card_token=token("4242424242424242"), amount_minor=100, currency="EUR"
    )
    assert isinstance(outcome, Authorized)


@pytest.mark.parametrize(
    ("pan", "reason"),
    [("4000000000009995", "insufficient_funds"), ("4000000000000069", "card_expired")],
)
async def test_decline_cards_decline_with_their_reason(
    psp: SimulatedPsp, pan: str, reason: str
) -> None:
    outcome = await psp.authorize(key="p1", card_token=token(pan), amount_minor=100, currency="EUR")
    assert isinstance(outcome, Declined)
    assert outcome.reason == reason


async def test_a_past_expiry_declines_as_expired(psp: SimulatedPsp) -> None:
    expired = token("4242424242424242", exp=(12, 2025))
    outcome = await psp.authorize(key="p1", card_token=expired, amount_minor=100, currency="EUR")
    assert outcome == Declined("card_expired", "simulated PSP: card expired")


async def test_requires_action_card_asks_for_authentication(psp: SimulatedPsp) -> None:
    outcome = await psp.authorize(
        key="p1", card_token=token("4000000000003220"), amount_minor=100, currency="EUR"
    )
    assert isinstance(outcome, ActionRequired)
    assert outcome.next_action_url.startswith("https://")


async def test_flaky_card_fails_n_times_per_key_then_succeeds(psp: SimulatedPsp) -> None:
    flaky = token("4000000000000119")
    for _ in range(2):
        with pytest.raises(PspTransientError):
            await psp.authorize(key="p1", card_token=flaky, amount_minor=100, currency="EUR")
    outcome = await psp.authorize(key="p1", card_token=flaky, amount_minor=100, currency="EUR")
    assert isinstance(outcome, Authorized)
    # Another key counts from zero.
    with pytest.raises(PspTransientError):
        await psp.authorize(key="p2", card_token=flaky, amount_minor=100, currency="EUR")


async def until(condition: Callable[[], Awaitable[bool]], *, within: float = 5) -> None:
    """Poll `condition` until it holds; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within}s")
        await asyncio.sleep(0.005)


async def test_slow_card_authorizes_before_it_answers(store: MemorySimStore) -> None:
    # A second for the answer: ample for the poll below to see the authorization first.
    psp = SimulatedPsp(store, slow_delay_s=1.0)
    call = asyncio.create_task(
        psp.authorize(
            key="p1", card_token=token("4000000000000077"), amount_minor=100, currency="EUR"
        )
    )

    async def authorized() -> bool:
        return (await store.get("auth:p1") or {}).get("state") == "authorized"

    await until(authorized)
    assert not call.done()
    assert isinstance(await call, Authorized)


async def test_the_same_key_twice_charges_once(psp: SimulatedPsp, store: MemorySimStore) -> None:
    card = token("4242424242424242")
    first = await psp.authorize(key="p1", card_token=card, amount_minor=1000, currency="EUR")
    again = await psp.authorize(key="p1", card_token=card, amount_minor=1000, currency="EUR")
    assert first == again
    receipts = await asyncio.gather(
        *(
            psp.capture(key="cap-1", authorization_key="p1", amount_minor=600, currency="EUR")
            for _ in range(3)
        )
    )
    assert len(set(receipts)) == 1
    assert (await store.get("auth:p1") or {})["captured_minor"] == 600


async def test_an_operation_key_replays_only_for_the_same_request(
    psp: SimulatedPsp, store: MemorySimStore
) -> None:
    card = token("4242424242424242")
    for payment in ("p1", "p2"):
        await psp.authorize(key=payment, card_token=card, amount_minor=1000, currency="EUR")
    first = await psp.capture(key="c1", authorization_key="p1", amount_minor=500, currency="EUR")
    again = await psp.capture(key="c1", authorization_key="p1", amount_minor=500, currency="EUR")
    assert again == first
    # The same key for another amount, or another payment: not the first call's receipt.
    with pytest.raises(PspKeyReused):
        await psp.capture(key="c1", authorization_key="p1", amount_minor=800, currency="EUR")
    with pytest.raises(PspKeyReused):
        await psp.capture(key="c1", authorization_key="p2", amount_minor=500, currency="EUR")
    await psp.refund(key="r1", authorization_key="p1", amount_minor=200, currency="EUR")
    with pytest.raises(PspKeyReused):
        await psp.refund(key="r1", authorization_key="p1", amount_minor=300, currency="EUR")
    await psp.void(key="v1", authorization_key="p2")
    with pytest.raises(PspKeyReused):
        await psp.void(key="v1", authorization_key="p1")
    auth = await store.get("auth:p1") or {}
    assert (auth["captured_minor"], auth["refunded_minor"], auth["voided"]) == (500, 200, False)


async def test_captures_and_refunds_are_limited_by_the_psp_too(psp: SimulatedPsp) -> None:
    card = token("4242424242424242")
    await psp.authorize(key="p1", card_token=card, amount_minor=1000, currency="EUR")
    await psp.capture(key="c1", authorization_key="p1", amount_minor=700, currency="EUR")
    with pytest.raises(PspRejected):
        await psp.capture(key="c2", authorization_key="p1", amount_minor=301, currency="EUR")
    await psp.refund(key="r1", authorization_key="p1", amount_minor=700, currency="EUR")
    with pytest.raises(PspRejected):
        await psp.refund(key="r2", authorization_key="p1", amount_minor=1, currency="EUR")


async def test_a_void_before_the_authorization_cancels_it(psp: SimulatedPsp) -> None:
    await psp.void(key="v1", authorization_key="p1")
    with pytest.raises(PspRejected):
        await psp.authorize(
            key="p1", card_token=token("4242424242424242"), amount_minor=100, currency="EUR"
        )


async def test_nothing_can_be_captured_after_a_void(psp: SimulatedPsp) -> None:
    card = token("4242424242424242")
    await psp.authorize(key="p1", card_token=card, amount_minor=100, currency="EUR")
    await psp.void(key="v1", authorization_key="p1")
    with pytest.raises(PspRejected):
        await psp.capture(key="c1", authorization_key="p1", amount_minor=100, currency="EUR")


class LosesTheAnswerAfterTheClaim:
    """Wraps a SimStore: the call that first writes operation record `op_key` does
    its work, then fails once as a lost connection would (Redis restarting, the
    worker killed, the activity cancelled), whatever store call that was."""

    def __init__(self, store: SimStore, op_key: str):
        self.store = store
        self.op_key = op_key
        self.failed = False

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            before = await self.store.get(self.op_key)
            result = await method(*args, **kwargs)
            written = before is None and await self.store.get(self.op_key) is not None
            if written and not self.failed:
                self.failed = True
                raise ConnectionError("connection lost after the operation was recorded")
            return result

        return call


def losing_the_answer_to(store: SimStore, op_key: str) -> SimulatedPsp:
    return SimulatedPsp(cast(SimStore, LosesTheAnswerAfterTheClaim(store, op_key)))


async def test_a_capture_answer_lost_after_its_claim_still_moved_the_money(
    psp: SimulatedPsp, store: MemorySimStore
) -> None:
    await psp.authorize(
        key="p1", card_token=token("4242424242424242"), amount_minor=1000, currency="EUR"
    )
    failing = losing_the_answer_to(store, "op:c1")
    with pytest.raises(ConnectionError):
        await failing.capture(key="c1", authorization_key="p1", amount_minor=1000, currency="EUR")
    # The retry replays the receipt payments then books: the PSP captured it too.
    await failing.capture(key="c1", authorization_key="p1", amount_minor=1000, currency="EUR")
    assert (await store.get("auth:p1") or {})["captured_minor"] == 1000
    await psp.refund(key="r1", authorization_key="p1", amount_minor=1000, currency="EUR")


async def test_a_refund_answer_lost_after_its_claim_still_counts_against_the_capture(
    psp: SimulatedPsp, store: MemorySimStore
) -> None:
    await psp.authorize(
        key="p1", card_token=token("4242424242424242"), amount_minor=1000, currency="EUR"
    )
    await psp.capture(key="c1", authorization_key="p1", amount_minor=1000, currency="EUR")
    failing = losing_the_answer_to(store, "op:r1")
    with pytest.raises(ConnectionError):
        await failing.refund(key="r1", authorization_key="p1", amount_minor=600, currency="EUR")
    await failing.refund(key="r1", authorization_key="p1", amount_minor=600, currency="EUR")
    with pytest.raises(PspRejected):
        await psp.refund(key="r2", authorization_key="p1", amount_minor=401, currency="EUR")
    assert (await store.get("auth:p1") or {})["refunded_minor"] == 600


async def test_a_void_answer_lost_after_its_claim_still_closes_the_authorization(
    psp: SimulatedPsp, store: MemorySimStore
) -> None:
    await psp.authorize(
        key="p1", card_token=token("4242424242424242"), amount_minor=1000, currency="EUR"
    )
    failing = losing_the_answer_to(store, "op:v1")
    with pytest.raises(ConnectionError):
        await failing.void(key="v1", authorization_key="p1")
    await failing.void(key="v1", authorization_key="p1")
    with pytest.raises(PspRejected):
        await psp.capture(key="c1", authorization_key="p1", amount_minor=100, currency="EUR")


class ReadsTheAuthorizationTogether:
    """Wraps a SimStore: the first two reads of `auth_key` answer only once both are
    made, as two concurrent operations on one authorization may read it."""

    def __init__(self, store: SimStore, auth_key: str):
        self.store = store
        self.auth_key = auth_key
        self.readers = 0
        self.both_read = asyncio.Event()

    async def get(self, key: str) -> dict[str, Any] | None:
        record = await self.store.get(key)
        if key == self.auth_key and self.readers < 2:
            self.readers += 1
            if self.readers == 2:
                self.both_read.set()
            await self.both_read.wait()
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def capture_twice_at_once(store: SimStore, payment_id: str) -> list[object]:
    """Two captures of 600 with different keys, both reading the authorization first."""
    psp = SimulatedPsp(cast(SimStore, ReadsTheAuthorizationTogether(store, f"auth:{payment_id}")))
    async with asyncio.timeout(30):
        return await asyncio.gather(
            *(
                psp.capture(key=key, authorization_key=payment_id, amount_minor=600, currency="EUR")
                for key in ("c1", "c2")
            ),
            return_exceptions=True,
        )


async def test_two_captures_cannot_both_take_the_rest_of_an_authorization(
    psp: SimulatedPsp, store: MemorySimStore
) -> None:
    await psp.authorize(
        key="p1", card_token=token("4242424242424242"), amount_minor=1000, currency="EUR"
    )
    results = await capture_twice_at_once(store, "p1")
    assert sorted(type(r).__name__ for r in results) == ["PspRejected", "Receipt"]
    assert (await store.get("auth:p1") or {})["captured_minor"] == 600
