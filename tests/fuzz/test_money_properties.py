"""Properties of the ledger arithmetic (workers/payments/ledger.py, model.py).

For any history an intent can have (authorize, partial captures up to the
authorized amount, a void of the rest, partial refunds up to what was captured),
every movement nets to zero, so does the whole ledger, the balances are exactly
what the intent's amounts say, and the status follows from the amounts.
The same limits enforced by the real service against the real database are
checked in tests/integration/test_security_money.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.settings import PROPERTY
from workers.payments.ledger import Movement, balances, entries_for, expected_balances
from workers.payments.model import Status, status_from_amounts

AMOUNTS = st.integers(min_value=1, max_value=10**15)
STEPS = st.lists(
    st.tuples(st.sampled_from(["capture", "void", "refund"]), st.floats(0.0, 1.0)), max_size=12
)


@PROPERTY
@given(AMOUNTS)
def test_every_movement_nets_to_zero(amount: int) -> None:
    for kind in Movement:
        entries = entries_for(kind, amount)
        assert sum(e.amount_minor for e in entries) == 0
        assert sorted(e.amount_minor for e in entries) == [-amount, amount]


def next_status(status: Status, kind: str, *, rest_open: bool, all_refunded: bool) -> Status:
    """The status after one step, read off docs/payments.md's state diagram, step by
    step (not from the amounts' totals as status_from_amounts does). `rest_open`:
    some of the hold is neither captured nor released after the step; `all_refunded`:
    everything captured has been refunded."""
    if kind == "capture":
        if status is Status.PARTIALLY_REFUNDED:
            return status  # more captured than refunded: still partly refunded
        return Status.PARTIALLY_CAPTURED if rest_open else Status.CAPTURED
    if kind == "void":  # releases the rest of the hold
        return {
            Status.AUTHORIZED: Status.VOIDED,
            Status.PARTIALLY_CAPTURED: Status.CAPTURED,
            Status.PARTIALLY_REFUNDED: (
                Status.REFUNDED if all_refunded else Status.PARTIALLY_REFUNDED
            ),
        }[status]
    assert kind == "refund"
    return Status.REFUNDED if all_refunded and not rest_open else Status.PARTIALLY_REFUNDED


def replay(
    authorized: int, steps: list[tuple[str, float]]
) -> tuple[dict[str, int], Status, list[tuple[Movement, int]]]:
    """Run the steps that are possible (a capture or void while some of the hold is
    open, a refund while something captured is not refunded), checking the status
    after each; the final amounts, the final status and the movements booked."""
    amounts = {"captured": 0, "released": 0, "refunded": 0}
    status = Status.AUTHORIZED
    movements = [(Movement.AUTHORIZE, authorized)]
    assert status_from_amounts(authorized, 0, 0, 0) is status
    for kind, share in steps:
        open_minor = authorized - amounts["captured"] - amounts["released"]
        refundable = amounts["captured"] - amounts["refunded"]
        if kind == "capture" and open_minor:
            movements.append((Movement.CAPTURE, max(1, int(open_minor * share))))
            amounts["captured"] += movements[-1][1]
        elif kind == "void" and open_minor:
            movements.append((Movement.VOID, open_minor))
            amounts["released"] += open_minor
        elif kind == "refund" and refundable:
            movements.append((Movement.REFUND, max(1, int(refundable * share))))
            amounts["refunded"] += movements[-1][1]
        else:
            continue  # not possible in this state: the service refuses it, nothing changes
        status = next_status(
            status,
            kind,
            rest_open=authorized > amounts["captured"] + amounts["released"],
            all_refunded=amounts["refunded"] == amounts["captured"],
        )
        assert status_from_amounts(authorized, **amounts) is status, (kind, amounts)
    return amounts, status, movements


@PROPERTY
@given(AMOUNTS, STEPS)
def test_any_valid_history_balances_matches_its_amounts_and_has_their_status(
    authorized: int, steps: list[tuple[str, float]]
) -> None:
    amounts, _, movements = replay(authorized, steps)  # (checks the status at each step)
    entries = [entry for kind, amount in movements for entry in entries_for(kind, amount)]
    actual = balances(entries)
    assert sum(actual.values()) == 0
    assert actual == expected_balances(authorized=authorized, **amounts)


# Histories ending in each of the six statuses an authorized intent can have.
ENDINGS = [
    ([], Status.AUTHORIZED),
    ([("capture", 0.5)], Status.PARTIALLY_CAPTURED),
    ([("capture", 1.0)], Status.CAPTURED),
    ([("capture", 0.5), ("void", 0.0)], Status.CAPTURED),
    ([("void", 0.0)], Status.VOIDED),
    ([("capture", 1.0), ("refund", 0.5)], Status.PARTIALLY_REFUNDED),
    ([("capture", 0.5), ("refund", 1.0)], Status.PARTIALLY_REFUNDED),  # the rest still held
    ([("capture", 0.5), ("refund", 1.0), ("capture", 1.0)], Status.PARTIALLY_REFUNDED),
    ([("capture", 0.5), ("refund", 1.0), ("void", 0.0)], Status.REFUNDED),
    ([("capture", 1.0), ("refund", 0.5), ("refund", 1.0)], Status.REFUNDED),
]


@pytest.mark.parametrize(("steps", "status"), ENDINGS)
def test_each_status_follows_from_its_history(
    steps: list[tuple[str, float]], status: Status
) -> None:
    assert replay(1000, steps)[1] is status


def test_the_histories_end_in_every_status_of_an_authorized_intent() -> None:
    before_authorization = {Status.PENDING, Status.REQUIRES_ACTION, Status.DECLINED}
    assert {status for _, status in ENDINGS} == set(Status) - before_authorization
