"""Catalog's read side: get, batch get, category listing and order price lines.

Every read goes through the product cache (cache.py); the database is the
loader, so a cache outage only makes reads slower.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from agora.errors import InvalidArgument
from agora.text import checked
from contracts.agora.catalog.v1 import PricedLine, Product
from contracts.agora.common.v1 import LineItem, Money
from workers.catalog.cache import ProductCache
from workers.catalog.errors import ProductNotFound
from workers.catalog.model import COLUMNS, CURRENCIES, from_row, validate_category

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_BATCH = 100
MAX_PRICE_LINES = 100
# With prices ≤ 10^12 minor units, 100 lines of this many stay within int64 totals
# (betterproto2 wraps a larger int64 silently into a negative one on the wire).
MAX_LINE_QUANTITY = 10_000
# A listing page is a derived entry: it cannot be invalidated per product, so it lives briefly.
LIST_TTL_S = 15.0


@dataclass(frozen=True)
class Page:
    products: list[Product]
    next_cursor: str


def encode_cursor(category: str, sku: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([category, sku]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
        # Exactly what encode_cursor writes: a list of two strings. (Unpacking alone
        # would take a two-key object's keys, or a two-character string, for one.)
        if not isinstance(position, list) or len(position) != 2:
            raise ValueError
        category, sku = position
        if not isinstance(category, str) or not isinstance(sku, str):
            raise ValueError
        if "\x00" in category or "\x00" in sku:
            raise ValueError  # PostgreSQL text cannot hold NUL: the query would fail
        category.encode(), sku.encode()  # a lone surrogate ("\ud800") is no UTF-8 text
        return category, sku
    # RecursionError: base64 of "[[[[..." nests deeper than the JSON parser goes.
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        raise InvalidArgument("cursor is malformed: pass back a next_cursor unchanged") from None


def in_category(candidate: str, category: str) -> bool:
    """Whether `candidate` is `category` or one of its descendants ("" holds every one)."""
    return not category or candidate == category or candidate.startswith(category + "/")


# A category's page: the index range [c, c + '0') bounds the scan on both sides ('/' <
# '0' bytewise, so it holds c and its descendants, and siblings such as "c-x", which the
# filter drops). Started at ("", "") and unbounded above, with the category only a
# filter (`$1 = '' OR ...`, no index condition in a generic plan), a page read every
# product listed before the category, and a last page every one after it.
_LIST_IN_CATEGORY = """
    SELECT sku, category FROM products
    WHERE category >= $1 AND category < $1 || '0'
      AND (category = $1 OR category >= $1 || '/')
      AND ($2 OR active)
      AND (category, sku) > ($3, $4)
    ORDER BY category, sku
    LIMIT $5
"""
_LIST_ALL = """
    SELECT sku, category FROM products
    WHERE ($1 OR active) AND (category, sku) > ($2, $3)
    ORDER BY category, sku
    LIMIT $4
"""


class CatalogReads:
    def __init__(self, pool: asyncpg.Pool, cache: ProductCache):
        self.pool = pool
        self.cache = cache

    async def _load_one(self, sku: str) -> Product | None:
        row = await self.pool.fetchrow(f"SELECT {COLUMNS} FROM products WHERE sku = $1", sku)
        return from_row(row) if row is not None else None

    async def _load_many(self, skus: Sequence[str]) -> dict[str, Product]:
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS} FROM products WHERE sku = ANY($1::text[])", list(skus)
        )
        return {row["sku"]: from_row(row) for row in rows}

    async def get(self, sku: str) -> Product:
        # Checked before the loader's query: a NUL would fail it (UNKNOWN), not find nothing.
        product = await self.cache.get(checked(sku, "sku"), self._load_one)
        if product is None:
            raise ProductNotFound(f"no product with sku {sku!r}")
        return product

    async def batch_get(self, skus: Sequence[str]) -> tuple[list[Product], list[str]]:
        """Products in request order, and the skus that do not exist."""
        if len(skus) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} skus per batch")
        for sku in skus:
            checked(sku, "sku")
        found = await self.cache.get_many(skus, self._load_many)
        products = [found[s] for s in dict.fromkeys(skus) if s in found]
        return products, [s for s in dict.fromkeys(skus) if s not in found]

    async def list_page(
        self, category: str, include_inactive: bool, page_size: int, cursor: str
    ) -> Page:
        """Products in `category` and its descendants, ordered by (category, sku)."""
        validate_category(category)
        size = page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        after = decode_cursor(cursor) if cursor else ("", "")
        cache_key = (
            "list:"
            + hashlib.sha256(
                json.dumps([category, include_inactive, size, cursor]).encode()
            ).hexdigest()[:32]
        )
        # Listing with inactive products is search's reindex backfill, which must see
        # every product as it is now: a page cached a moment ago could miss one just
        # created, and the new index would show it as a hidden stock stub.
        cached = None if include_inactive else await self.cache.get_json(cache_key)
        if cached is not None:
            skus, next_cursor = json.loads(cached)
        else:
            # A first page starts at (category, ""), before every sku of the category
            # and its descendants (a sku has a character at least).
            start = max(after, (category, ""))
            rows = await self.pool.fetch(
                _LIST_IN_CATEGORY if category else _LIST_ALL,
                *((category,) if category else ()),
                include_inactive,
                *start,
                size + 1,
            )
            more = len(rows) > size
            rows = rows[:size]
            skus = [r["sku"] for r in rows]
            next_cursor = encode_cursor(rows[-1]["category"], rows[-1]["sku"]) if more else ""
            if not include_inactive:
                await self.cache.set_json(
                    cache_key, json.dumps([skus, next_cursor]).encode(), LIST_TTL_S
                )
        if include_inactive:
            # Nor may its products come from the cache: an entry left stale by a write
            # whose cache refresh failed would be copied into the new index for good.
            found = await self._load_many(skus) if skus else {}
            return Page([found[s] for s in skus if s in found], next_cursor)
        products, _ = await self.batch_get(skus) if skus else ([], [])
        # The sku list may be a page cached before a product was deactivated or moved
        # out of the category; its products are current: list only what still belongs.
        listed = [p for p in products if p.active and in_category(p.category, category)]
        return Page(listed, next_cursor)

    async def price_lines(
        self, lines: Sequence[LineItem], currency: str
    ) -> tuple[list[PricedLine], Money, list[str]]:
        """Unit prices of an order's lines; unknown, inactive or other-currency skus unavailable."""
        if currency not in CURRENCIES:
            raise InvalidArgument(f"currency {currency!r} is not supported")
        if not lines or len(lines) > MAX_PRICE_LINES:
            raise InvalidArgument(f"an order has 1 to {MAX_PRICE_LINES} lines")
        for line in lines:
            checked(line.sku, "sku")
            if not 0 < line.quantity <= MAX_LINE_QUANTITY:
                raise InvalidArgument(
                    f"quantity of {line.sku!r} must be between 1 and {MAX_LINE_QUANTITY}"
                )
        found = await self.cache.get_many([line.sku for line in lines], self._load_many)
        priced: list[PricedLine] = []
        unavailable: list[str] = []
        subtotal = 0
        for line in lines:
            product = found.get(line.sku)
            price = product.price if product is not None else None
            if product is None or not product.active or price is None or price.currency != currency:
                unavailable.append(line.sku)
                continue
            total = price.amount_minor * line.quantity
            subtotal += total
            priced.append(
                PricedLine(
                    sku=line.sku,
                    title=product.title,
                    quantity=line.quantity,
                    unit_price=Money(amount_minor=price.amount_minor, currency=currency),
                    line_total=Money(amount_minor=total, currency=currency),
                    product_version=product.version,
                )
            )
        return priced, Money(amount_minor=subtotal, currency=currency), unavailable
