"""The orders service's read API refuses a malformed request before any query."""

from __future__ import annotations

import pytest

from agora.errors import InvalidArgument
from contracts.agora.orders.v1 import ListOrdersRequest, OrderStatus
from workers.orders.api import OrdersApi


class _NoDatabase:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the request reached the database ({name})")


def _listing_with_status(value: int) -> ListOrdersRequest:
    """The request as a client with a newer proto sends it: a status this one lacks."""
    wire = bytes(ListOrdersRequest(customer_id="cust-1", status=OrderStatus.COMPLETED))
    assert wire.endswith(bytes([0x10, int(OrderStatus.COMPLETED)]))
    return ListOrdersRequest.parse(wire[:-1] + bytes([value]))


async def test_a_status_the_service_does_not_know_is_refused_not_listed_as_nothing() -> None:
    # It parses as a nameless member, truthy: the query asked for status '' and
    # answered OK with an empty page, as if the customer had no such orders.
    request = _listing_with_status(99)
    assert request.status not in OrderStatus.__members__.values()
    with pytest.raises(InvalidArgument, match="99 is not an order status"):
        await OrdersApi(_NoDatabase()).list_orders(request)  # type: ignore[arg-type]
