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

The rule is written once, in `merged`. `merge` applies one change (read, decide,
compare-and-set); `merge_many` applies a consumer batch's changes to an index
with one `mget` and one `_bulk` of compare-and-set writes, and hands any write
that lost a race back to `merge`, so both paths give the same documents.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
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


class DocumentRejected(Exception):
    """Elasticsearch refused a document of a bulk write (a mapping error): retrying cannot help."""


class BulkFailed(Exception):
    """A bulk read or write failed for a reason worth retrying (e.g. a busy node)."""


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


@dataclass(frozen=True)
class Change:
    """One source's state for a document: `fields`, at `version` of `version_field`.

    `empty` fills the other source's fields of a document this change creates.
    `source` names where the change came from (a metric label).
    """

    sku: str
    source: str
    version_field: str
    version: int
    fields: dict[str, Any]
    empty: dict[str, Any]


def product_change(product: Product) -> Change:
    return Change(
        product.sku,
        "catalog",
        "product_version",
        product.version,
        product_fields(product),
        EMPTY_STOCK,
    )


def stock_change(level: StockLevel) -> Change:
    return Change(
        level.sku, "inventory", "stock_version", level.version, stock_fields(level), EMPTY_PRODUCT
    )


def merged(source: dict[str, Any] | None, change: Change) -> dict[str, Any] | None:
    """THE merge rule: the document after `change`, or None when the document
    (`source`, None if there is none yet) already holds that version or a newer one."""
    if source is not None and int(source.get(change.version_field) or 0) >= change.version:
        return None
    return {**change.empty, "sku": change.sku, **(source or {}), **change.fields}


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
    es: AsyncElasticsearch, index: str, change: Change, *, likely_new: bool = False
) -> bool:
    """Apply `change` to its document if its version is above the one held.

    Returns whether the document changed. Raises IndexMissing if `index` is gone.
    `likely_new` (a product's creation) tries a plain create first, saving the
    read; if the document exists after all, the create fails and the merge runs.
    """
    sku = change.sku
    if likely_new:
        try:
            await es.create(index=index, id=sku, document=merged(None, change))
            return True
        except ConflictError:
            pass
        except NotFoundError as error:
            if _index_missing(error):
                raise IndexMissing(index) from None
            raise
    for _ in range(MAX_ATTEMPTS):
        source, seq_no, term = await _current(es, index, sku)
        document = merged(source, change)
        if document is None:
            return False
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


async def merge_many(es: AsyncElasticsearch, index: str, changes: Sequence[Change]) -> list[Change]:
    """Apply many changes with one `mget` and one `_bulk`; returns those that took effect.

    The same rule as `merge`, per document: the changes of a sku are folded into
    the document the `mget` read (one not newer than what it holds drops out),
    and the result is written with a compare-and-set on the `_seq_no` /
    `_primary_term` read (a `create` where there was no document). A write that
    lost to a concurrent one (409) is redone through `merge`, which reads again
    and re-decides. Raises IndexMissing if `index` is gone, DocumentRejected if
    Elasticsearch refuses a document, BulkFailed for any other failed read or
    write (worth a retry: the merges are idempotent).
    """
    by_sku: dict[str, list[Change]] = {}
    for change in changes:
        by_sku.setdefault(change.sku, []).append(change)
    if not by_sku:
        return []
    found = await es.mget(index=index, ids=list(by_sku))
    operations: list[dict[str, Any]] = []
    written: list[list[Change]] = []
    for doc in found["docs"]:
        if "error" in doc:
            if doc["error"].get("type") == "index_not_found_exception":
                raise IndexMissing(index)
            raise BulkFailed(f"reading {doc['_id']} from {index}: {doc['error']}")
        source = dict(doc["_source"]) if doc.get("found") else None
        document, applied = _fold(source, by_sku[doc["_id"]])
        if document is None:
            continue
        target = {"_index": index, "_id": doc["_id"]}
        if source is None:
            operations.append({"create": target})
        else:
            cas = {"if_seq_no": int(doc["_seq_no"]), "if_primary_term": int(doc["_primary_term"])}
            operations.append({"index": {**target, **cas}})
        operations.append(document)
        written.append(applied)
    if not operations:
        return []
    answer = await es.bulk(operations=operations)
    done: list[Change] = []
    for item, applied in zip(answer["items"], written, strict=True):
        result = next(iter(item.values()))
        status = int(result.get("status", 0))
        if status < 300:
            done.extend(applied)
        elif status == 409:  # written in between: re-read and re-decide, one by one
            done.extend([c for c in by_sku[result["_id"]] if await merge(es, index, c)])
        elif result.get("error", {}).get("type") == "index_not_found_exception":
            raise IndexMissing(index)
        elif status == 400:
            raise DocumentRejected(f"{result['_id']} in {index}: {result.get('error')}")
        else:
            raise BulkFailed(f"writing {result['_id']} to {index}: {status} {result.get('error')}")
    return done


def _fold(
    source: dict[str, Any] | None, changes: Sequence[Change]
) -> tuple[dict[str, Any] | None, list[Change]]:
    """The document after `changes` (None if none of them is newer) and those that applied."""
    document, applied = source, []
    for change in changes:
        after = merged(document, change)
        if after is not None:
            document = after
            applied.append(change)
    return (document if applied else None), applied


async def apply_product(es: AsyncElasticsearch, index: str, product: Product) -> bool:
    return await merge(es, index, product_change(product), likely_new=product.version == 1)


def copied_stock(sku: str, stock: dict[str, Any]) -> Change:
    """Stock fields read from another index (STOCK_FIELDS of a document), as a change."""
    version = int(stock.get("stock_version") or 0)
    return Change(sku, "inventory", "stock_version", version, stock, EMPTY_PRODUCT)


async def copy_stock(es: AsyncElasticsearch, index: str, sku: str, stock: dict[str, Any]) -> bool:
    """Stock fields read from another index, merged by version."""
    return await merge(es, index, copied_stock(sku, stock))
