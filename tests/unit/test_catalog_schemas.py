"""The gateway's catalog bodies apply the catalog's product rules before anything starts."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.schemas_catalog import CreateProductRequest, ImportProductsRequest


def body(**overrides: Any) -> dict[str, Any]:
    return {
        "sku": "SKU-1",
        "title": "Lamp",
        "category": "home/lighting",
        "price": {"amount_minor": 1999, "currency": "EUR"},
        **overrides,
    }


def test_attributes_at_their_limits_are_accepted() -> None:
    attributes = {f"{i:02d}" + "k" * 62: "v" * 1000 for i in range(50)}
    assert CreateProductRequest.model_validate(body(attributes=attributes)).attributes == attributes


@pytest.mark.parametrize(
    "attributes",
    [
        {"k" * 65: "red"},
        {"colour": "r" * 1001},
        {f"a{i}": "x" for i in range(51)},
    ],
)
def test_an_attribute_name_or_value_too_long_is_a_schema_error(attributes: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="attributes"):
        CreateProductRequest.model_validate(body(attributes=attributes))


def test_an_import_listing_a_sku_twice_is_refused() -> None:
    # A recall (`"active": false`) beside a row of the same sku without `active` (keep
    # it as it is) kept the product on sale: "keep" was decided per sku.
    recall = body(active=False)
    again = body(price={"amount_minor": 2499, "currency": "EUR"})
    with pytest.raises(ValidationError, match="SKU-1 appears more than once"):
        ImportProductsRequest.model_validate({"products": [recall, again]})
    other = body(sku="SKU-2")
    assert len(ImportProductsRequest.model_validate({"products": [recall, other]}).products) == 2
