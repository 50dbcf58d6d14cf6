"""Catalog's activities: every product write, run by catalog's worker for its workflows.

Each write is one transaction holding the product row and its event in the
outbox. Writes are idempotent: applying the same change twice finds nothing
to change and writes no second event (so a retried activity, or a re-run
import, neither bumps a version nor duplicates a product). After the commit
the fresh product is written into the cache (a versioned write that a stale
reader cannot undo); if Redis is down the workflow retries that step alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import asyncpg
import betterproto2
from redis.exceptions import RedisError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from agora import outbox
from agora.errors import DomainError
from contracts.agora.catalog.v1 import (
    PriceChanged,
    Product,
    ProductCreated,
    ProductDeactivated,
    ProductUpdated,
)
from contracts.agora.common.v1 import Money
from workers.catalog.cache import ProductCache
from workers.catalog.errors import ALREADY_EXISTS, CONFLICT, INVALID, NOT_FOUND
from workers.catalog.model import (
    COLUMNS,
    ProductData,
    changed_fields,
    data_of,
    from_row,
    validate,
    validate_price,
)

log = logging.getLogger(__name__)
TOPIC = "catalog.events"
AGGREGATE = "product"


@dataclass
class CreateProductInput:
    product: ProductData


@dataclass
class UpdateProductInput:
    """Replaces every writable field; `expected_version` (0: any) guards against lost updates."""

    product: ProductData
    expected_version: int = 0


@dataclass
class ChangePriceInput:
    sku: str
    amount_minor: int
    currency: str
    expected_version: int = 0


@dataclass
class DeactivateProductInput:
    sku: str


@dataclass
class WriteResult:
    sku: str
    version: int
    changed: bool
    cache_refreshed: bool = True


@dataclass
class RefreshCacheInput:
    skus: list[str]


@dataclass
class UpsertBatchInput:
    import_id: str
    batch_index: int
    products: list[ProductData]


@dataclass
class RowError:
    sku: str
    reason: str


@dataclass
class UpsertBatchResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)


def _workflow_ref() -> outbox.WorkflowRef:
    try:
        info = activity.info()
    except RuntimeError:  # called outside an activity (tests, tools)
        return outbox.WorkflowRef()
    return outbox.WorkflowRef(info.workflow_id or "", info.workflow_run_id or "")


def _rejection(error: DomainError, kind: str) -> ApplicationError:
    return ApplicationError(error.detail, type=kind, non_retryable=True)


class CatalogActivities:
    """Holds catalog's write dependencies; each method is one idempotent activity."""

    def __init__(self, pool: asyncpg.Pool, cache: ProductCache):
        self.pool = pool
        self.cache = cache

    # Single-product writes ------------------------------------------------------

    @activity.defn(name="catalog.create_product")
    async def create_product(self, data: CreateProductInput) -> WriteResult:
        """Insert a new product; an existing sku with other data is a rejection.

        The same data again (a retry) is the product already created: success.
        """
        new = data.product
        try:
            validate(new)
        except DomainError as error:
            raise _rejection(error, INVALID) from None
        async with self.pool.acquire() as conn, conn.transaction():
            before = await _locked(conn, new.sku)
            if before is not None:
                if data_of(before) == new:
                    return await self._refreshed(
                        WriteResult(new.sku, before.version, False), before
                    )
                raise _rejection(DomainError(f"product {new.sku!r} already exists"), ALREADY_EXISTS)
            product = await _insert(conn, new)
            await _event(conn, product.sku, ProductCreated(product=product))
        return await self._refreshed(WriteResult(product.sku, product.version, True), product)

    @activity.defn(name="catalog.update_product")
    async def update_product(self, data: UpdateProductInput) -> WriteResult:
        new = data.product
        try:
            validate(new)
        except DomainError as error:
            raise _rejection(error, INVALID) from None
        async with self.pool.acquire() as conn, conn.transaction():
            before = await self._existing(conn, new.sku, data.expected_version)
            changed = changed_fields(data_of(before), new)
            if not changed:
                return await self._refreshed(WriteResult(new.sku, before.version, False), before)
            product = await _update(conn, new)
            await _event(conn, new.sku, ProductUpdated(product=product, changed_fields=changed))
        return await self._refreshed(WriteResult(product.sku, product.version, True), product)

    @activity.defn(name="catalog.change_price")
    async def change_price(self, data: ChangePriceInput) -> WriteResult:
        try:
            validate_price(data.amount_minor, data.currency)
        except DomainError as error:
            raise _rejection(error, INVALID) from None
        async with self.pool.acquire() as conn, conn.transaction():
            before = await self._existing(conn, data.sku, data.expected_version)
            old = data_of(before)
            if (old.price_minor, old.currency) == (data.amount_minor, data.currency):
                return await self._refreshed(WriteResult(data.sku, before.version, False), before)
            old_price = Money(amount_minor=old.price_minor, currency=old.currency)
            old.price_minor, old.currency = data.amount_minor, data.currency
            product = await _update(conn, old)
            await _event(
                conn,
                data.sku,
                PriceChanged(
                    sku=data.sku,
                    old_price=old_price,
                    new_price=product.price,
                    version=product.version,
                    product=product,
                ),
            )
        return await self._refreshed(WriteResult(product.sku, product.version, True), product)

    @activity.defn(name="catalog.deactivate_product")
    async def deactivate_product(self, data: DeactivateProductInput) -> WriteResult:
        async with self.pool.acquire() as conn, conn.transaction():
            before = await self._existing(conn, data.sku, 0)
            if not before.active:
                return await self._refreshed(WriteResult(data.sku, before.version, False), before)
            new = data_of(before)
            new.active = False
            product = await _update(conn, new)
            await _event(
                conn,
                data.sku,
                ProductDeactivated(sku=data.sku, version=product.version, product=product),
            )
        return await self._refreshed(WriteResult(product.sku, product.version, True), product)

    @activity.defn(name="catalog.refresh_cache")
    async def refresh_cache(self, data: RefreshCacheInput) -> None:
        """Write the committed products into the cache; raises while Redis is down (retried)."""
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS} FROM products WHERE sku = ANY($1::text[])", data.skus
        )
        for row in rows:
            await self.cache.put(from_row(row))

    # Bulk import ----------------------------------------------------------------

    @activity.defn(name="catalog.upsert_batch")
    async def upsert_batch(self, data: UpsertBatchInput) -> UpsertBatchResult:
        """Create or update a batch of products by sku, in one transaction.

        Unchanged products are counted and left alone, which is what makes a
        retried batch (say, after the worker died mid-import) a no-op for the
        part that was already applied. Heartbeats tell Temporal the batch is alive.
        """
        result = UpsertBatchResult()
        written: list[Product] = []
        async with self.pool.acquire() as conn, conn.transaction():
            skus = [p.sku for p in data.products]
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM products WHERE sku = ANY($1::text[])"
                " ORDER BY sku FOR UPDATE",
                skus,
            )
            existing = {row["sku"]: from_row(row) for row in rows}
            for index, new in enumerate(data.products):
                if index % 25 == 0:
                    activity.heartbeat(index)
                try:
                    validate(new)
                except DomainError as error:
                    result.errors.append(RowError(new.sku, error.detail))
                    continue
                before = existing.get(new.sku)
                if before is None:
                    product = await _insert(conn, new)
                    await _event(conn, new.sku, ProductCreated(product=product))
                    result.created += 1
                else:
                    changed = changed_fields(data_of(before), new)
                    if not changed:
                        result.unchanged += 1
                        continue
                    product = await _update(conn, new)
                    await _event(
                        conn, new.sku, ProductUpdated(product=product, changed_fields=changed)
                    )
                    result.updated += 1
                existing[new.sku] = product
                written.append(product)
        try:
            for product in written:
                await self.cache.put(product)
        except RedisError as error:
            # Entries left behind are bounded by their TTL; the import need not fail for it.
            log.warning("import could not refresh the cache", extra={"error": repr(error)})
        return result

    # Helpers ----------------------------------------------------------------------

    async def _existing(self, conn: asyncpg.Connection, sku: str, expected_version: int) -> Product:
        product = await _locked(conn, sku)
        if product is None:
            raise _rejection(DomainError(f"no product with sku {sku!r}"), NOT_FOUND)
        if expected_version and product.version != expected_version:
            raise _rejection(
                DomainError(f"product is at version {product.version}, not {expected_version}"),
                CONFLICT,
            )
        return product

    async def _refreshed(self, result: WriteResult, product: Product) -> WriteResult:
        try:
            await self.cache.put(product)
        except RedisError as error:
            log.warning("cache refresh deferred", extra={"sku": product.sku, "error": repr(error)})
            result.cache_refreshed = False
        return result


async def _locked(conn: asyncpg.Connection, sku: str) -> Product | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM products WHERE sku = $1 FOR UPDATE", sku)
    return from_row(row) if row is not None else None


async def _insert(conn: asyncpg.Connection, new: ProductData) -> Product:
    row = await conn.fetchrow(
        f"""
        INSERT INTO products (sku, title, description, brand, category, attributes,
                              price_minor, currency, active)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9)
        RETURNING {COLUMNS}
        """,
        new.sku,
        new.title,
        new.description,
        new.brand,
        new.category,
        json.dumps(new.attributes),
        new.price_minor,
        new.currency,
        new.active,
    )
    return from_row(row)


async def _update(conn: asyncpg.Connection, new: ProductData) -> Product:
    row = await conn.fetchrow(
        f"""
        UPDATE products SET title = $2, description = $3, brand = $4, category = $5,
            attributes = $6::jsonb, price_minor = $7, currency = $8, active = $9,
            version = version + 1, updated_at = now()
        WHERE sku = $1
        RETURNING {COLUMNS}
        """,
        new.sku,
        new.title,
        new.description,
        new.brand,
        new.category,
        json.dumps(new.attributes),
        new.price_minor,
        new.currency,
        new.active,
    )
    return from_row(row)


async def _event(conn: asyncpg.Connection, sku: str, payload: betterproto2.Message) -> None:
    await outbox.append(
        conn,
        producer="catalog",
        topic=TOPIC,
        aggregate_type=AGGREGATE,
        aggregate_id=sku,
        payload=payload,
        workflow=_workflow_ref(),
    )
