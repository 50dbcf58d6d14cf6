"""The simulated PSP: test cards, tokens without card numbers, and its own idempotency."""

from __future__ import annotations

import asyncio
import datetime as dt

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
from workers.payments.psp_sim import MemorySimStore, SimulatedPsp, tokenize

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


async def test_slow_card_authorizes_before_it_answers(
    psp: SimulatedPsp, store: MemorySimStore
) -> None:
    call = asyncio.create_task(
        psp.authorize(
            key="p1", card_token=token("4000000000000077"), amount_minor=100, currency="EUR"
        )
    )
    await asyncio.sleep(0.05)
    assert not call.done()
    assert (await store.get("auth:p1") or {})["state"] == "authorized"
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
