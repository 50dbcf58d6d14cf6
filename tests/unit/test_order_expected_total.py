"""The total a POST says the customer was shown: the saga's check, the digest, the setting."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from activities.orders import OrderLineInput, PricedLine, PricedOrder
from agora import config
from gateway.failures import from_temporal
from workers.orders.model import OrderInput, request_digest
from workflows.orders import Rejected, check_expected_total

LINES = [OrderLineInput("SKU-1", 2), OrderLineInput("SKU-2", 1)]


def order(expected: int | None, tolerance_bps: int = 0) -> OrderInput:
    return OrderInput(
        order_id="order-1",
        customer_id="cust-1",
        idempotency_key="key-1",
        lines=LINES,
        currency="EUR",
        card_token="tok_test",
        expected_total_minor=expected,
        price_tolerance_bps=tolerance_bps,
    )


def priced(total_minor: int) -> PricedOrder:
    return PricedOrder(
        [PricedLine("SKU-1", "Lamp", 1, total_minor, total_minor)], "EUR", total_minor
    )


@pytest.mark.parametrize(
    ("expected", "tolerance_bps", "total"),
    [
        (2000, 0, 2000),  # as shown
        (2500, 0, 2000),  # lower: taken
        (1981, 100, 2000),  # 1981 + 1 % (19.81, rounded down to 19) = 2000
        (None, 0, 10**15),  # no total shown: no check
    ],
)
def test_a_total_as_shown_lower_or_within_the_tolerance_is_taken(
    expected: int | None, tolerance_bps: int, total: int
) -> None:
    check_expected_total(order(expected, tolerance_bps), priced(total))


@pytest.mark.parametrize(
    ("expected", "tolerance_bps", "total"),
    [
        (1999, 0, 2000),  # one cent more, none allowed
        (1980, 100, 2000),  # 1980 + 19 = 1999: one cent beyond 1 %
        (1, 10_000, 3),  # twice the shown total is the most 100 % allows
    ],
)
def test_a_total_risen_beyond_the_tolerance_is_price_changed_naming_both_totals(
    expected: int, tolerance_bps: int, total: int
) -> None:
    with pytest.raises(Rejected) as rejected:
        check_expected_total(order(expected, tolerance_bps), priced(total))
    assert rejected.value.reason == "PRICE_CHANGED"
    assert f"now comes to {total}, more than the {expected} you were shown" in rejected.value.detail
    assert "review the order and place it again" in rejected.value.detail


def test_the_digest_of_a_post_without_an_expected_total_is_the_one_sagas_already_hold() -> None:
    # Running sagas (and closed ones, whose result carries it) compare a retried POST's
    # digest with the one they computed: it must not change for POSTs without the field.
    before = "0fd9a13d133bc00e7cbee12a36cd66c83a4401d9daa58c4e32b6015f46bd93df"
    assert request_digest(LINES, "EUR") == before
    assert request_digest(LINES, "EUR", None) == before


def test_the_expected_total_is_part_of_what_a_key_names() -> None:
    digests = {
        request_digest(LINES, "EUR"),
        request_digest(LINES, "EUR", 2000),
        request_digest(LINES, "EUR", 2001),
    }
    assert len(digests) == 3


def test_the_price_tolerance_defaults_to_none_and_refuses_a_negative() -> None:
    assert config.load({}).order_price_tolerance_bps == 0
    assert config.load({"AGORA_ORDER_PRICE_TOLERANCE_BPS": "100"}).order_price_tolerance_bps == 100
    with pytest.raises(ValueError, match="AGORA_ORDER_PRICE_TOLERANCE_BPS"):
        config.load({"AGORA_ORDER_PRICE_TOLERANCE_BPS": "-1"})


def test_an_order_rejected_problem_names_its_reason_for_the_client_to_switch_on() -> None:
    # What `accept` fails with: a client tells prices to review from a card to change.
    refused = WorkflowUpdateFailedError(
        ApplicationError("the prices changed: ...", type="PRICE_CHANGED", non_retryable=True)
    )
    problem = from_temporal(refused)
    assert (problem.status, problem.code) == (422, "order-rejected")
    assert problem.extensions == {"reason": "PRICE_CHANGED"}
    assert problem.detail == "the prices changed: ..."
    # Other problems carry no such member.
    other = from_temporal(WorkflowUpdateFailedError(ApplicationError("x", type="OrderFinished")))
    assert (other.code, other.extensions) == ("conflict", {})
