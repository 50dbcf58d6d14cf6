"""Catalog's activities: every product write, run by catalog's worker for its workflows.

Each write is one transaction holding the product row, its event in the
outbox and the activity's result (`activity_results`, keyed by the activity
execution). An attempt retried after its commit returns that result and writes
nothing: comparing data alone would let a retry that came after another admin's
write put its older data back, or answer a write guarded by `expected_version`
with a conflict though it had committed. Applying the same change again in a
new request (a re-run import) still finds nothing to change and writes no second
event. After the commit the fresh product is written into the cache (a versioned
write that a stale reader cannot undo); if Redis is down the workflow retries
that step alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TypeVar, overload

import asyncpg
import betterproto2
from redis.exceptions import RedisError
from temporalio import activity
from temporalio.converter import value_to_type
from temporalio.exceptions import ApplicationError

from agora import outbox
from agora.db import lock_for_transaction
from agora.errors import DomainError
from agora.temporal import rejection
from agora.text import shown, storable
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
    """Replaces every writable field; `expected_version` (0: any) guards against lost updates.

    `keep_active`: the product's `active` stays as it is (a PUT without it): an edit
    of a product DELETE deactivated does not put it back on sale.
    """

    product: ProductData
    expected_version: int = 0
    keep_active: bool = False


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
    create_only: bool = False  # ImportInput.create_only
    keep_active: list[str] = field(default_factory=list)  # ImportInput.keep_active, this batch's


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


# Results older than this are pruned: no workflow retries an activity that long.
RESULT_RETENTION_DAYS = 30
Result = TypeVar("Result", "WriteResult", "UpsertBatchResult")


def _attempt_key() -> str:
    """The activity execution this call is an attempt of ("" outside an activity)."""
    try:
        info = activity.info()
    except RuntimeError:
        return ""
    return f"{info.workflow_run_id}:{info.activity_id}" if info.workflow_run_id else ""


async def _earlier_result(conn: asyncpg.Connection, result_type: type[Result]) -> Result | None:
    """The result an earlier attempt of this activity committed, if one did.

    Locks the attempt key for the transaction first, so an attempt still running
    beside its retry (a lost heartbeat) cannot write beside it."""
    key = _attempt_key()
    if not key:
        return None
    await lock_for_transaction(conn, key)
    stored = await conn.fetchval("SELECT result FROM activity_results WHERE attempt_key = $1", key)
    return None if stored is None else value_to_type(result_type, json.loads(stored))


async def _keep_result(conn: asyncpg.Connection, result: WriteResult | UpsertBatchResult) -> None:
    """Store the result in the write's transaction (see _earlier_result)."""
    key = _attempt_key()
    if not key:
        return
    await conn.execute(
        "INSERT INTO activity_results (attempt_key, result) VALUES ($1, $2::jsonb)",
        key,
        json.dumps(asdict(result)),
    )
    await conn.execute(
        "DELETE FROM activity_results WHERE attempt_key IN (SELECT attempt_key"
        " FROM activity_results WHERE created_at < now() - make_interval(days => $1)"
        " LIMIT 100)",
        RESULT_RETENTION_DAYS,
    )


def _rejection(error: DomainError, kind: str) -> ApplicationError:
    return rejection(error.detail, type=kind)


class CatalogActivities:
    """Holds catalog's write dependencies; each method is one idempotent activity."""

    def __init__(self, pool: asyncpg.Pool, cache: ProductCache):
        self.pool = pool
        self.cache = cache

    # Single-product writes ------------------------------------------------------

    @activity.defn(name="catalog.create_product")
    async def create_product(self, data: CreateProductInput) -> WriteResult:
        """Insert a new product; an existing sku with other data is a rejection.

        The same data again (a retried request) is the product already created: success.
        """
        new = data.product
        try:
            validate(new)
        except DomainError as error:
            raise _rejection(error, INVALID) from None

        async def write(conn: asyncpg.Connection) -> tuple[WriteResult, Product]:
            before = await _locked(conn, new.sku)
            if before is not None:
                if data_of(before) == new:
                    return WriteResult(new.sku, before.version, False), before
                raise _rejection(DomainError(f"product {new.sku!r} already exists"), ALREADY_EXISTS)
            product = await _insert(conn, new)
            await _event(conn, product.sku, ProductCreated(product=product))
            return WriteResult(product.sku, product.version, True), product

        return await self._write_once(write)

    @activity.defn(name="catalog.update_product")
    async def update_product(self, data: UpdateProductInput) -> WriteResult:
        new = data.product
        try:
            validate(new)
        except DomainError as error:
            raise _rejection(error, INVALID) from None

        async def write(conn: asyncpg.Connection) -> tuple[WriteResult, Product]:
            before = await _existing(conn, new.sku, data.expected_version)
            if data.keep_active:
                new.active = before.active
            changed = changed_fields(data_of(before), new)
            if not changed:
                return WriteResult(new.sku, before.version, False), before
            product = await _update(conn, new)
            await _event(conn, new.sku, ProductUpdated(product=product, changed_fields=changed))
            return WriteResult(product.sku, product.version, True), product

        return await self._write_once(write)

    @activity.defn(name="catalog.change_price")
    async def change_price(self, data: ChangePriceInput) -> WriteResult:
        try:
            validate_price(data.amount_minor, data.currency)
        except DomainError as error:
            raise _rejection(error, INVALID) from None

        async def write(conn: asyncpg.Connection) -> tuple[WriteResult, Product]:
            before = await _existing(conn, data.sku, data.expected_version)
            old = data_of(before)
            if (old.price_minor, old.currency) == (data.amount_minor, data.currency):
                return WriteResult(data.sku, before.version, False), before
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
            return WriteResult(product.sku, product.version, True), product

        return await self._write_once(write)

    @activity.defn(name="catalog.deactivate_product")
    async def deactivate_product(self, data: DeactivateProductInput) -> WriteResult:
        async def write(conn: asyncpg.Connection) -> tuple[WriteResult, Product]:
            before = await _existing(conn, data.sku, 0)
            if not before.active:
                return WriteResult(data.sku, before.version, False), before
            new = data_of(before)
            new.active = False
            product = await _update(conn, new)
            await _event(
                conn,
                data.sku,
                ProductDeactivated(sku=data.sku, version=product.version, product=product),
            )
            return WriteResult(product.sku, product.version, True), product

        return await self._write_once(write)

    @activity.defn(name="catalog.refresh_cache")
    async def refresh_cache(self, data: RefreshCacheInput) -> None:
        """Write the committed products into the cache; raises while Redis is down (retried)."""
        await self._cache_committed(data.skus)

    async def _cache_committed(self, skus: list[str]) -> None:
        rows = await self.pool.fetch(
            f"SELECT {COLUMNS} FROM products WHERE sku = ANY($1::text[])", skus
        )
        for row in rows:
            await self.cache.put(from_row(row))

    # Bulk import ----------------------------------------------------------------

    @activity.defn(name="catalog.upsert_batch")
    async def upsert_batch(self, data: UpsertBatchInput) -> UpsertBatchResult:
        """Create or update a batch of products by sku, in one transaction.

        A batch retried after its commit returns the committed result (see the
        module docstring); unchanged products are counted and left alone, which
        makes a re-run import a no-op. Heartbeats tell Temporal the batch is alive.
        """
        try:
            return await self._upsert_and_cache(data)
        except asyncio.CancelledError:
            # The import cancelled (a heartbeat delivers it, at any await): after the
            # commit (while the connection went back to the pool, or while the batch
            # cached), or with its COMMIT in flight. The batch's committed rows are
            # cached all the same (set-if-newer; rows of a batch rolled back are cached
            # as they were): a stale entry would price orders at the old price until its
            # TTL, and a cancelled activity is not retried.
            try:
                await self._cache_committed([p.sku for p in data.products if storable(p.sku)])
            except Exception as error:  # the cancel stands; the entries expire with their TTL
                log.warning("cancelled batch not cached again: %s", error)
            raise

    async def _upsert_and_cache(self, data: UpsertBatchInput) -> UpsertBatchResult:
        async with self.pool.acquire() as conn, conn.transaction():
            earlier = await _earlier_result(conn, UpsertBatchResult)
            if earlier is None:
                result, written = await self._upsert(conn, data)
            else:
                # Committed by an attempt that died before (or while) it cached what it
                # wrote: cache the batch's committed rows now (set-if-newer).
                result = earlier
                written = [
                    from_row(row)
                    for row in await conn.fetch(
                        f"SELECT {COLUMNS} FROM products WHERE sku = ANY($1::text[])",
                        # A sku PostgreSQL cannot hold was a refused row: it would
                        # fail this read, and every retry of the batch, for ever.
                        [p.sku for p in data.products if storable(p.sku)],
                    )
                ]
        # After the commit, as a single write's refresh_cache: a Redis error fails the
        # attempt, and the retry (the stored result above) caches the rows again. An
        # entry left stale would price orders at the old price until its TTL.
        # Heartbeating here too: with Redis slow (20 ms a write, under its timeout) the
        # caching of a large batch outlasted the heartbeat timeout, on the first attempt
        # and on every retry (the earlier-result path caches the whole batch again), and
        # the import never went on.
        for cached, product in enumerate(written):
            if cached % 25 == 0:
                activity.heartbeat(f"cached {cached}")
            await self.cache.put(product)
        return result

    async def _upsert(
        self, conn: asyncpg.Connection, data: UpsertBatchInput
    ) -> tuple[UpsertBatchResult, list[Product]]:
        result = UpsertBatchResult()
        written: list[Product] = []
        valid: list[ProductData] = []
        keep_active = set(data.keep_active)
        for new in data.products:
            try:
                validate(new)
            except DomainError as error:
                # The report is stored (jsonb): a NUL or a lone surrogate in the sku is
                # shown as U+FFFD.
                result.errors.append(RowError(shown(new.sku), error.detail))
            else:
                valid.append(new)
        # Only valid skus reach the locking read: an invalid one (a NUL) would fail it,
        # and with it the whole batch, forever.
        rows = await conn.fetch(
            f"SELECT {COLUMNS} FROM products WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE",
            [p.sku for p in valid],
        )
        existing = {row["sku"]: from_row(row) for row in rows}
        # In sku order, as the locking read: the new skus' inserts lock too, and two
        # imports inserting them in opposite orders deadlocked (one batch aborted).
        # A sku another import inserted since the read waits for it, then is updated.
        for index, new in enumerate(sorted(valid, key=lambda p: p.sku)):
            if index % 25 == 0:
                activity.heartbeat(index)
            before = existing.get(new.sku)
            if before is None:
                inserted = await _insert(conn, new, if_absent=True)
                if inserted is not None:
                    await _event(conn, new.sku, ProductCreated(product=inserted))
                    result.created += 1
                    existing[new.sku] = inserted
                    written.append(inserted)
                    continue
                row = await conn.fetchrow(
                    f"SELECT {COLUMNS} FROM products WHERE sku = $1 FOR UPDATE", new.sku
                )
                before = from_row(row)
            if new.sku in keep_active:
                new.active = before.active
            changed = changed_fields(data_of(before), new)
            if not changed or data.create_only:
                result.unchanged += 1
                continue
            product = await _update(conn, new)
            await _event(conn, new.sku, ProductUpdated(product=product, changed_fields=changed))
            result.updated += 1
            existing[new.sku] = product
            written.append(product)
        await _keep_result(conn, result)
        return result, written

    # Helpers ----------------------------------------------------------------------

    async def _write_once(
        self, write: Callable[[asyncpg.Connection], Awaitable[tuple[WriteResult, Product]]]
    ) -> WriteResult:
        """Run one product write in a transaction with its result, then cache the product.

        A retried attempt whose first attempt committed gets that result back; the
        workflow then refreshes the cache from the row as it is now."""
        async with self.pool.acquire() as conn, conn.transaction():
            earlier = await _earlier_result(conn, WriteResult)
            if earlier is not None:
                earlier.cache_refreshed = False
                return earlier
            result, product = await write(conn)
            await _keep_result(conn, result)
        return await self._refreshed(result, product)

    async def _refreshed(self, result: WriteResult, product: Product) -> WriteResult:
        try:
            await self.cache.put(product)
        except RedisError as error:
            log.warning("cache refresh deferred", extra={"sku": product.sku, "error": repr(error)})
            result.cache_refreshed = False
        return result


async def _existing(conn: asyncpg.Connection, sku: str, expected_version: int) -> Product:
    product = await _locked(conn, sku)
    if product is None:
        raise _rejection(DomainError(f"no product with sku {sku!r}"), NOT_FOUND)
    if expected_version and product.version != expected_version:
        raise _rejection(
            DomainError(f"product is at version {product.version}, not {expected_version}"),
            CONFLICT,
        )
    return product


async def _locked(conn: asyncpg.Connection, sku: str) -> Product | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM products WHERE sku = $1 FOR UPDATE", sku)
    return from_row(row) if row is not None else None


@overload
async def _insert(conn: asyncpg.Connection, new: ProductData) -> Product: ...
@overload
async def _insert(
    conn: asyncpg.Connection, new: ProductData, *, if_absent: bool
) -> Product | None: ...
async def _insert(
    conn: asyncpg.Connection, new: ProductData, *, if_absent: bool = False
) -> Product | None:
    """The new row; with `if_absent`, None when the sku exists (a unique violation
    otherwise), once the transaction that inserted it has ended."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO products (sku, title, description, brand, category, attributes,
                              price_minor, currency, active)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9)
        {"ON CONFLICT (sku) DO NOTHING" if if_absent else ""}
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
    return None if row is None else from_row(row)


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
