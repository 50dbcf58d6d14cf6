"""The digest an idempotent write keeps of its request (gateway.upstream.request_digest)."""

from __future__ import annotations

import dataclasses

from gateway.upstream import request_digest
from workers.catalog.model import ProductData
from workers.orders.model import RefundOrderInput


def lamp(**changes: object) -> ProductData:
    base = ProductData(
        "SKU-1", "Lamp", "home/lighting", 1999, "EUR", attributes={"a": "1", "b": "2"}
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_same_request_sent_again_has_the_same_digest() -> None:
    # A retry's JSON may list attributes in another order: still the same request.
    reordered = lamp(attributes={"b": "2", "a": "1"})
    assert request_digest(lamp()) == request_digest(reordered)


def test_any_other_field_gives_another_digest() -> None:
    digests = {
        request_digest(lamp()),
        request_digest(lamp(title="Lamp 2")),
        request_digest(lamp(price_minor=2000)),
        request_digest(lamp(attributes={"a": "1"})),
        request_digest(lamp(active=False)),
    }
    assert len(digests) == 5


def test_a_refund_of_another_amount_is_another_request() -> None:
    full = RefundOrderInput("order-1", "key-12345678", None, "damaged")
    part = RefundOrderInput("order-1", "key-12345678", 500, "damaged")
    assert request_digest(full) != request_digest(part)
    assert len(request_digest(full)) == 64
