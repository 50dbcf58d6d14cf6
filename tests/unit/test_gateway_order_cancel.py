"""The cancel route's decision after the saga's cancel update answered."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.agora.orders.v1 import Order, OrderStatus
from gateway.problems import Problem
from gateway.routes import orders as routes
from gateway.schemas_orders import CancelOrderRequest
from workers.orders.model import OrderView


@pytest.fixture
def cancelled_after(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand-ins for the upstream calls; returns which cancel paths ran."""
    ran: list[str] = []

    async def own_order(_: Any) -> Order:
        return Order(order_id="o-1", status=OrderStatus.CONFIRMED)  # read before the update

    async def cancel_completed(_: Any, order: Order, __: Any) -> OrderView:
        ran.append("cancel_completed")
        return OrderView(order.order_id, "CANCELLED")

    monkeypatch.setattr(routes, "_own_order", own_order)
    monkeypatch.setattr(routes, "_cancel_completed", cancel_completed)
    monkeypatch.setattr(routes, "_from_view", lambda _, view: view)
    return ran


def saga_answers(monkeypatch: pytest.MonkeyPatch, status: str) -> None:
    async def cancel_running(*_: Any) -> OrderView:
        return OrderView("o-1", status)

    monkeypatch.setattr(routes, "_cancel_running", cancel_running)


async def test_a_saga_that_completed_with_a_partial_refund_meanwhile_is_cancelled_here(
    cancelled_after: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The saga's own cancel of the completed order failed (a refund of part of it
    # was recorded meanwhile): the rest is refunded and the stock returned here.
    saga_answers(monkeypatch, "PARTIALLY_REFUNDED")
    answer: Any = await routes.cancel_order(None, CancelOrderRequest())  # type: ignore[arg-type]
    assert answer.status == "CANCELLED" and cancelled_after == ["cancel_completed"]


async def test_a_saga_refunded_in_full_meanwhile_is_a_conflict_not_a_cancel(
    cancelled_after: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    saga_answers(monkeypatch, "REFUNDED")
    with pytest.raises(Problem) as refused:
        await routes.cancel_order(None, CancelOrderRequest())  # type: ignore[arg-type]
    assert refused.value.code == "conflict" and cancelled_after == []


async def test_a_saga_that_compensated_answers_its_cancel(
    cancelled_after: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    saga_answers(monkeypatch, "CANCELLED")
    answer: Any = await routes.cancel_order(None, CancelOrderRequest())  # type: ignore[arg-type]
    assert answer.status == "CANCELLED" and cancelled_after == []
