"""Search documents: one per sku, merged from two independent sources.

A document holds the product (from `catalog.events`, versioned by the product's
version) and its stock (from `inventory.events`, versioned by the stock level's
version). One external version cannot order two sources, so each source's
version is a field of the document and an update applies only if it is newer
than the one held; the write itself is a compare-and-set on the document's
`_seq_no` / `_primary_term`, retried on conflict. That makes every update
idempotent (a redelivered event changes nothing) and order-insensitive (a late,
stale event loses), which the reindex relies on as well: the backfill and the
live events write the same merge into the new index, and whichever is newer wins.
"""

from __future__ import annotations

import logging
from typing import Any

from elasticsearch import AsyncElasticsearch, ConflictError, NotFoundError

from contracts.agora.catalog.v1 import Product
from contracts.agora.inventory.v1 import StockLevel

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 20

EMPTY_STOCK: dict[str, Any] = {"in_stock": False, "available": 0, "stock_version": 0}
STOCK_FIELDS = list(EMPTY_STOCK)
EMPTY_PRODUCT: dict[str, Any] = {"has_product": False, "active": False, "product_version": 0}


class IndexMissing(Exception):
    """The target index is gone (dropped after a reindex swap)."""


def category_path(category: str) -> list[str]:
    parts = category.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def product_fields(product: Product) -> dict[str, Any]:
    price = product.price
    return {
        "sku": product.sku,
        "title": product.title,
        "description": product.description,
        "brand": product.brand,
        "category": product.category,
        "category_path": category_path(product.category),
        "price_minor": price.amount_minor if price else 0,
        "currency": price.currency if price else "",
        "active": product.active,
        "has_product": True,
        "product_version": product.version,
        "created_at": product.created_at.isoformat() if product.created_at else None,
        "updated_at": product.updated_at.isoformat() if product.updated_at else None,
    }


def stock_fields(level: StockLevel) -> dict[str, Any]:
    return {
        "in_stock": level.available > 0,
        "available": level.available,
        "stock_version": level.version,
    }


def product_document(product: Product, stock: dict[str, Any] | None = None) -> dict[str, Any]:
    """A full document: the product plus the given stock fields (or none yet)."""
    return {**EMPTY_STOCK, **(stock or {}), **product_fields(product)}


async def _current(
    es: AsyncElasticsearch, index: str, sku: str
) -> tuple[dict[str, Any] | None, int, int]:
    try:
        found = await es.get(index=index, id=sku)
    except NotFoundError as error:
        if _index_missing(error):
            raise IndexMissing(index) from None
        return None, 0, 0
    return dict(found["_source"]), int(found["_seq_no"]), int(found["_primary_term"])


def _index_missing(error: NotFoundError) -> bool:
    body = error.body if isinstance(error.body, dict) else {}
    return bool(body.get("error", {}).get("type") == "index_not_found_exception")


async def merge(
    es: AsyncElasticsearch,
    index: str,
    sku: str,
    version_field: str,
    version: int,
    fields: dict[str, Any],
    empty: dict[str, Any],
    *,
    likely_new: bool = False,
) -> bool:
    """Apply `fields` to the document if `version` is above its `version_field`.

    Returns whether the document changed. Raises IndexMissing if `index` is gone.
    `likely_new` (a product's creation) tries a plain create first, saving the
    read; if the document exists after all, the create fails and the merge runs.
    """
    if likely_new:
        try:
            await es.create(index=index, id=sku, document={**empty, "sku": sku, **fields})
            return True
        except ConflictError:
            pass
        except NotFoundError as error:
            if _index_missing(error):
                raise IndexMissing(index) from None
            raise
    for _ in range(MAX_ATTEMPTS):
        source, seq_no, term = await _current(es, index, sku)
        if source is not None and int(source.get(version_field) or 0) >= version:
            return False
        document = {**empty, "sku": sku, **(source or {}), **fields}
        try:
            if source is None:
                await es.create(index=index, id=sku, document=document)
            else:
                await es.index(
                    index=index, id=sku, document=document, if_seq_no=seq_no, if_primary_term=term
                )
            return True
        except ConflictError:
            continue  # someone wrote in between: read again and re-decide
        except NotFoundError as error:
            if _index_missing(error):
                raise IndexMissing(index) from None
            raise
    raise RuntimeError(f"document {sku} kept changing under {MAX_ATTEMPTS} attempts")


async def apply_product(es: AsyncElasticsearch, index: str, product: Product) -> bool:
    return await merge(
        es,
        index,
        product.sku,
        "product_version",
        product.version,
        product_fields(product),
        EMPTY_STOCK,
        likely_new=product.version == 1,
    )


async def apply_stock(es: AsyncElasticsearch, index: str, level: StockLevel) -> bool:
    return await merge(
        es, index, level.sku, "stock_version", level.version, stock_fields(level), EMPTY_PRODUCT
    )


async def copy_stock(es: AsyncElasticsearch, index: str, sku: str, stock: dict[str, Any]) -> bool:
    """Stock fields read from another index (STOCK_FIELDS of a document), merged by version."""
    version = int(stock.get("stock_version") or 0)
    return await merge(es, index, sku, "stock_version", version, stock, EMPTY_PRODUCT)
