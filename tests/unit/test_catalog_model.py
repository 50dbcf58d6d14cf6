"""Catalog's product rules: what a product may look like, and what counts as a change."""

from __future__ import annotations

import dataclasses

import pytest

from agora.errors import InvalidArgument
from contracts.agora.common.v1 import LineItem
from workers.catalog.errors import InvalidProduct
from workers.catalog.model import ProductData, changed_fields, validate
from workers.catalog.reads import (
    MAX_LINE_QUANTITY,
    CatalogReads,
    decode_cursor,
    encode_cursor,
)


def product(**overrides: object) -> ProductData:
    base = ProductData(
        sku="SKU-1", title="Lamp", category="home/lighting", price_minor=1999, currency="EUR"
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_a_well_formed_product_is_valid() -> None:
    validate(product())
    validate(product(attributes={f"{i:02d}" + "k" * 62: "v" * 1000 for i in range(50)}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"price_minor": -1}, "price"),
        ({"currency": "XYZ"}, "currency"),
        ({"currency": "eur"}, "currency"),
        ({"sku": "has space"}, "sku"),
        ({"title": "  "}, "title"),
        ({"category": "Home/Lighting"}, "category"),
        ({"category": "home//lighting"}, "category"),
        ({"category": "a" * 201}, "category"),
        ({"title": "Lamp\x00"}, "NUL"),
        ({"description": "\x00"}, "NUL"),
        ({"attributes": {"colour\x00": "red"}}, "NUL"),
        ({"attributes": {"colour": "r\x00ed"}}, "NUL"),
        ({"attributes": {f"a{i}": "x" for i in range(51)}}, "at most 50 attributes"),
        # One product's event must fit a Kafka message: attributes are bounded too.
        ({"attributes": {"k" * 65: "red"}}, "attribute names"),
        ({"attributes": {"colour": "r" * 1001}}, "attribute values"),
    ],
)
def test_a_product_breaking_a_rule_is_rejected_naming_it(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidProduct, match=message):
        validate(product(**overrides))


def test_changed_fields_names_what_differs_and_price_once() -> None:
    before = product()
    assert changed_fields(before, product()) == []
    assert changed_fields(before, product(title="Lamp 2", price_minor=1)) == ["title", "price"]
    assert changed_fields(before, product(currency="USD")) == ["price"]
    assert changed_fields(before, product(attributes={"color": "red"})) == ["attributes"]


def test_listing_cursors_round_trip_and_garbage_is_an_invalid_argument() -> None:
    assert decode_cursor(encode_cursor("home/lighting", "SKU-9")) == ("home/lighting", "SKU-9")
    for garbage in ("!!", "e30", "WzFd"):
        with pytest.raises(InvalidArgument):
            decode_cursor(garbage)


async def test_a_quantity_whose_total_could_leave_int64_is_refused_before_any_read() -> None:
    reads = CatalogReads(pool=None, cache=None)  # type: ignore[arg-type]
    huge = LineItem(sku="SKU-1", quantity=MAX_LINE_QUANTITY + 1)
    with pytest.raises(InvalidArgument, match="quantity"):
        await reads.price_lines([huge], "EUR")
