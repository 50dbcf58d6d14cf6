"""POST /v1/orders/{id}/payment: the update id a completion is sent with, which makes a
retry join the first instead of authorizing again or being refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.routes import orders as routes
from workers.orders.model import OrderView, completion_update_id

LINK = "https://psp.invalid/3ds/1"


def request(key: str | None = None) -> object:
    headers = {"Idempotency-Key": key} if key else {}
    return make_mocked_request("POST", "/v1/orders/o-1/payment", headers=headers)


@pytest.fixture
def saga(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[OrderView | None]]:
    """The saga's views, answered one per call: the round waiting, then taken."""
    views: list[OrderView | None] = [
        OrderView(order_id="o-1", status="AWAITING_PAYMENT", next_action_url=LINK),
        OrderView(order_id="o-1", status="PENDING"),
    ]

    async def saga_view(_: object, order_id: str) -> OrderView | None:
        assert order_id == "o-1"
        return views.pop(0)

    monkeypatch.setattr(routes, "_saga_view", saga_view)
    yield views


async def test_a_keyed_completion_keeps_its_id_however_far_the_saga_went(
    saga: list[OrderView | None],
) -> None:
    # The first completion was taken (the saga left AWAITING_PAYMENT, its link gone)
    # and its answer lost: the retry got a fresh id, and the validator's 409 "not
    # waiting for a payment" for a payment going ahead.
    first = await routes._completion_id(request("pay-12345678"), "o-1", "tok_1")  # type: ignore[arg-type]
    again = await routes._completion_id(request("pay-12345678"), "o-1", "tok_1")  # type: ignore[arg-type]
    assert first is not None and first == again
    other_key = await routes._completion_id(request("pay-87654321"), "o-1", "tok_1")  # type: ignore[arg-type]
    other_token = await routes._completion_id(request("pay-12345678"), "o-1", "tok_2")  # type: ignore[arg-type]
    assert len({first, other_key, other_token}) == 3
    assert len(saga) == 2, "a keyed completion does not ask the saga"


async def test_without_a_key_the_id_is_the_rounds_while_it_waits(
    saga: list[OrderView | None],
) -> None:
    waiting = await routes._completion_id(request(), "o-1", "tok_1")  # type: ignore[arg-type]
    assert waiting == completion_update_id("tok_1", LINK)
    taken = await routes._completion_id(request(), "o-1", "tok_1")  # type: ignore[arg-type]
    assert taken is None  # what the key is for: the round's id cannot be made again
