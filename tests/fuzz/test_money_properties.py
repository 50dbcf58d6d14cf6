"""Properties of the ledger arithmetic (workers/payments/ledger.py, model.py).

For any history an intent can have (authorize, partial captures up to the
authorized amount, a void of the rest, partial refunds up to what was captured),
every movement nets to zero, so does the whole ledger, the balances are exactly
what the intent's amounts say, and the status follows from the amounts.
The same limits enforced by the real service against the real database are
checked in tests/integration/test_security_money.py.
"""

from __future__ import annotations

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


@PROPERTY
@given(AMOUNTS, STEPS)
def test_any_valid_history_balances_and_matches_its_amounts(
    authorized: int, steps: list[tuple[str, float]]
) -> None:
    captured = released = refunded = 0
    entries = entries_for(Movement.AUTHORIZE, authorized)
    for kind, share in steps:
        open_minor = authorized - captured - released
        if kind == "capture" and open_minor:
            amount = max(1, int(open_minor * share))
            captured += amount
            entries += entries_for(Movement.CAPTURE, amount)
        elif kind == "void" and open_minor:
            released += open_minor
            entries += entries_for(Movement.VOID, open_minor)
        elif kind == "refund" and captured - refunded:
            amount = max(1, int((captured - refunded) * share))
            refunded += amount
            entries += entries_for(Movement.REFUND, amount)
        assert 0 <= refunded <= captured <= captured + released <= authorized
    actual = balances(entries)
    assert sum(actual.values()) == 0
    assert actual == expected_balances(
        authorized=authorized, captured=captured, released=released, refunded=refunded
    )
    status = status_from_amounts(authorized, captured, released, refunded)
    if refunded and refunded == captured and captured + released == authorized:
        assert status is Status.REFUNDED
    elif not (captured or released or refunded):
        assert status is Status.AUTHORIZED
    assert (status is Status.VOIDED) == (released > 0 and captured == 0 and refunded == 0)
