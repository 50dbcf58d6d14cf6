"""The product as the catalog stores it, its validation, and its protobuf form.

`ProductData` is what crosses workflow and activity boundaries (a dataclass,
payload-converter friendly); `Product` (protobuf) is what the read API and the
events carry. Validation lives here so the gateway, the workflows and the
activities apply the same rules.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from agora.text import storable
from contracts.agora.catalog.v1 import Product
from contracts.agora.common.v1 import Money
from workers.catalog.errors import InvalidProduct

# ISO 4217 codes the store sells in. A code outside the list is a client error,
# not a silently accepted string: prices in an unknown currency cannot be charged.
CURRENCIES: frozenset[str] = frozenset(
    {"EUR", "USD", "GBP", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "JPY", "CAD", "AUD"}
)
SKU_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Slash-separated lower-case slugs, e.g. "electronics/audio/headphones".
CATEGORY_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*(?:/[a-z0-9]+(?:-[a-z0-9]+)*){0,5}$")
MAX_PRICE_MINOR = 10**12
MAX_ATTRIBUTES = 50
# Per attribute: with 50 of them a product stays well under Kafka's 1 MiB message
# (its events carry the whole product; a larger one could never be published).
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_VALUE = 1000
MAX_CATEGORY = 200  # the gateway's limit; the (category, sku) index holds ~2.7 KB


@dataclass
class ProductData:
    """A product's writable fields (everything but version and timestamps)."""

    sku: str
    title: str
    category: str
    price_minor: int
    currency: str
    description: str = ""
    brand: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    active: bool = True


def validate(data: ProductData) -> None:
    """Raise InvalidProduct naming the first rule the product breaks."""
    if not SKU_PATTERN.fullmatch(data.sku):
        raise InvalidProduct(f"sku {data.sku!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if not data.title.strip() or len(data.title) > 200:
        raise InvalidProduct("title must be 1-200 characters")
    if len(data.description) > 5000:
        raise InvalidProduct("description must be at most 5000 characters")
    if len(data.brand) > 100:
        raise InvalidProduct("brand must be at most 100 characters")
    if len(data.category) > MAX_CATEGORY or not CATEGORY_PATTERN.fullmatch(data.category):
        raise InvalidProduct(
            f"category {data.category[:64]!r} must be a path of lower-case slugs"
            f" (at most {MAX_CATEGORY} characters)"
        )
    validate_price(data.price_minor, data.currency)
    validate_attributes(data.attributes)
    texts = (data.title, data.description, data.brand, *data.attributes, *data.attributes.values())
    if not all(storable(text) for text in texts):
        # PostgreSQL text and jsonb hold neither a NUL nor a lone surrogate: the write
        # would fail, and be retried, for ever (the gateway refuses both; other
        # starters, an import workflow started directly, reach this).
        raise InvalidProduct("text fields must not contain NUL characters or lone surrogates")


def validate_attributes(attributes: dict[str, str]) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidProduct(f"at most {MAX_ATTRIBUTES} attributes")
    if any(len(key) > MAX_ATTRIBUTE_KEY for key in attributes):
        raise InvalidProduct(f"attribute names must be at most {MAX_ATTRIBUTE_KEY} characters")
    if any(len(value) > MAX_ATTRIBUTE_VALUE for value in attributes.values()):
        raise InvalidProduct(f"attribute values must be at most {MAX_ATTRIBUTE_VALUE} characters")


def validate_price(amount_minor: int, currency: str) -> None:
    if amount_minor < 0 or amount_minor > MAX_PRICE_MINOR:
        raise InvalidProduct("price must be between 0 and 10^12 minor units")
    if currency not in CURRENCIES:
        raise InvalidProduct(f"currency {currency!r} is not one of {', '.join(sorted(CURRENCIES))}")


def validate_category(category: str) -> None:
    if category and not CATEGORY_PATTERN.fullmatch(category):
        raise InvalidProduct(f"category {category!r} must be a path of lower-case slugs")


COLUMNS = (
    "sku, title, description, brand, category, attributes, price_minor, currency,"
    " active, version, created_at, updated_at"
)


def from_row(row: asyncpg.Record | dict[str, Any]) -> Product:
    attributes = row["attributes"]
    if isinstance(attributes, str):
        attributes = json.loads(attributes)
    return Product(
        sku=row["sku"],
        title=row["title"],
        description=row["description"],
        brand=row["brand"],
        category=row["category"],
        attributes=dict(attributes),
        price=Money(amount_minor=row["price_minor"], currency=row["currency"].strip()),
        active=row["active"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def data_of(product: Product) -> ProductData:
    price = product.price or Money()
    return ProductData(
        sku=product.sku,
        title=product.title,
        category=product.category,
        price_minor=price.amount_minor,
        currency=price.currency,
        description=product.description,
        brand=product.brand,
        attributes=dict(product.attributes),
        active=product.active,
    )


def changed_fields(before: ProductData, after: ProductData) -> list[str]:
    """Names of the fields that differ (price counts once, as "price")."""
    names = []
    for name in ("title", "description", "brand", "category", "attributes", "active"):
        if getattr(before, name) != getattr(after, name):
            names.append(name)
    if (before.price_minor, before.currency) != (after.price_minor, after.currency):
        names.append("price")
    return names


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
