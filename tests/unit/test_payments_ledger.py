"""Ledger arithmetic: every movement balances, and an intent's balances follow from its amounts."""

from __future__ import annotations

import itertools

import pytest

from agora.money import MAX_AMOUNT_MINOR
from workers.payments.errors import InvalidPaymentRequest
from workers.payments.intents import _amount
from workers.payments.ledger import (
    Account,
    Entry,
    Movement,
    balances,
    entries_for,
    expected_balances,
    mismatches,
)
from workers.payments.model import Status, payment_id_for, status_from_amounts


@pytest.mark.parametrize("kind", list(Movement))
def test_every_movement_is_two_entries_that_sum_to_zero(kind: Movement) -> None:
    entries = entries_for(kind, 1234)
    assert len(entries) == 2
    assert sum(e.amount_minor for e in entries) == 0
    assert {abs(e.amount_minor) for e in entries} == {1234}


@pytest.mark.parametrize("amount", [0, -5])
def test_a_movement_moves_a_positive_amount(amount: int) -> None:
    with pytest.raises(ValueError):
        entries_for(Movement.CAPTURE, amount)


def test_authorize_holds_the_customers_money() -> None:
    assert balances(entries_for(Movement.AUTHORIZE, 500)) == {
        Account.CUSTOMER_FUNDS: -500,
        Account.AUTHORIZED_HOLDS: 500,
        Account.MERCHANT_REVENUE: 0,
        Account.REFUNDS: 0,
    }


def test_a_mixed_history_nets_to_zero_and_matches_the_intents_amounts() -> None:
    # authorize 1000, capture 300 + 200, void the remaining 500, refund 150 + 350.
    history = [
        (Movement.AUTHORIZE, 1000),
        (Movement.CAPTURE, 300),
        (Movement.CAPTURE, 200),
        (Movement.VOID, 500),
        (Movement.REFUND, 150),
        (Movement.REFUND, 350),
    ]
    entries = list(itertools.chain.from_iterable(entries_for(k, a) for k, a in history))
    actual = balances(entries)
    assert sum(actual.values()) == 0
    expected = expected_balances(authorized=1000, captured=500, released=500, refunded=500)
    assert actual == expected
    # Fully refunded and released: nothing left anywhere but the revenue and its contra.
    assert actual[Account.CUSTOMER_FUNDS] == 0
    assert actual[Account.AUTHORIZED_HOLDS] == 0
    assert actual[Account.MERCHANT_REVENUE] == 500
    assert actual[Account.REFUNDS] == -500


@pytest.mark.parametrize(
    ("authorized", "captured", "released", "refunded"),
    [(0, 0, 0, 0), (100, 0, 0, 0), (100, 40, 0, 0), (100, 40, 60, 10), (100, 100, 0, 100)],
)
def test_expected_balances_always_sum_to_zero(
    authorized: int, captured: int, released: int, refunded: int
) -> None:
    expected = expected_balances(
        authorized=authorized, captured=captured, released=released, refunded=refunded
    )
    assert sum(expected.values()) == 0


def test_mismatches_name_the_account_that_is_off() -> None:
    expected = expected_balances(authorized=100, captured=100, released=0, refunded=0)
    actual = balances([*entries_for(Movement.AUTHORIZE, 100), Entry(Account.REFUNDS, -1)])
    found = mismatches(actual, expected)
    assert any(line.startswith("merchant_revenue") for line in found)
    assert any(line.startswith("refunds") for line in found)


@pytest.mark.parametrize(
    ("amounts", "status"),
    [
        ((100, 0, 0, 0), Status.AUTHORIZED),
        ((100, 30, 0, 0), Status.PARTIALLY_CAPTURED),
        ((100, 100, 0, 0), Status.CAPTURED),
        ((100, 30, 70, 0), Status.CAPTURED),  # partial capture, rest released: final
        ((100, 0, 100, 0), Status.VOIDED),
        ((100, 100, 0, 40), Status.PARTIALLY_REFUNDED),
        ((100, 100, 0, 100), Status.REFUNDED),
        ((100, 30, 0, 30), Status.PARTIALLY_REFUNDED),  # a hold is still open
    ],
)
def test_status_follows_from_the_amounts(
    amounts: tuple[int, int, int, int], status: Status
) -> None:
    assert status_from_amounts(*amounts) == status


def test_payment_id_is_derived_from_the_authorize_key() -> None:
    assert payment_id_for("order-1:pay") == payment_id_for("order-1:pay")
    assert payment_id_for("order-1:pay") != payment_id_for("order-2:pay")


@pytest.mark.parametrize("amount", [0, -1, MAX_AMOUNT_MINOR + 1, 2**63])
def test_an_amount_out_of_range_is_an_invalid_request(amount: int) -> None:
    # Not left to the database (a bigint overflow there would be retried as transient).
    with pytest.raises(InvalidPaymentRequest):
        _amount(amount, optional=False)


def test_an_amount_in_range_is_taken() -> None:
    assert _amount(MAX_AMOUNT_MINOR, optional=False) == MAX_AMOUNT_MINOR
    assert _amount(None, optional=True) is None
