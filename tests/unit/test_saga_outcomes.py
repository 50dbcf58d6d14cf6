"""What the saga outcome counter calls a failure (OrderSagaFailureRatioHigh reads it)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from activities import orders
from activities.orders import PSP_SILENT, OrdersActivities, TransitionInput, UnrecordedEnd


class Counted:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def add(self, amount: int, attributes: dict[str, Any]) -> None:
        self.outcomes.append(attributes["outcome"])


@pytest.mark.parametrize(
    ("status", "rejection", "reason", "outcome"),
    [
        ("COMPLETED", "", "", "completed"),
        ("CANCELLED", "", "changed my mind", "cancelled"),
        ("REJECTED", "PAYMENT_DECLINED", "insufficient funds", "rejected"),
        ("REJECTED", "OUT_OF_STOCK", "not enough SKU-1", "rejected"),
        # The customer left it unpaid (3-D Secure): theirs, not the platform's.
        ("REJECTED", "PAYMENT_TIMEOUT", "the order was not paid in time", "rejected"),
        # The PSP never answered: an outage, the platform's failure.
        ("REJECTED", "PAYMENT_TIMEOUT", PSP_SILENT, "failed"),
        ("REJECTED", "PAYMENT_FAILED", "capture refused", "failed"),
    ],
)
def test_an_ended_saga_is_counted_by_whose_outcome_it_is(
    monkeypatch: pytest.MonkeyPatch, status: str, rejection: str, reason: str, outcome: str
) -> None:
    counted = Counted()
    monkeypatch.setattr(orders, "_saga_outcomes", counted)
    change = TransitionInput("o-1", status, "k", reason=reason, rejection=rejection)
    OrdersActivities._observe(None, change, dt.datetime.now(dt.UTC))  # type: ignore[arg-type]
    assert counted.outcomes == [outcome]


@pytest.mark.parametrize(
    ("rejection", "outcome"),
    [
        # Catalog never answered: an outage, the platform's failure (it must page).
        ("PRICING_UNAVAILABLE", "failed"),
        # Catalog's answer: the price rose past what the customer was shown, or the
        # product is not sold: the order's outcome.
        ("PRICE_CHANGED", "rejected"),
        ("PRODUCT_UNAVAILABLE", "rejected"),
    ],
)
async def test_a_saga_rejected_before_its_order_was_recorded_is_counted(
    monkeypatch: pytest.MonkeyPatch, rejection: str, outcome: str
) -> None:
    counted = Counted()
    monkeypatch.setattr(orders, "_saga_outcomes", counted)
    await OrdersActivities.count_unrecorded(None, UnrecordedEnd(rejection, "detail"))  # type: ignore[arg-type]
    assert counted.outcomes == [outcome]
