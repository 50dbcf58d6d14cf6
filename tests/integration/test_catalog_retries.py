"""Catalog writes retried by Temporal after they committed, on the real database and Redis.

A worker that dies after a write's commit but before reporting it makes Temporal
run the activity again (same workflow run, same activity id). That attempt must
return what the first committed, not write again: by then another admin may
have written the product, and a version-guarded write would see its own new
version as a conflict. And two imports of the same new skus at once, which must
not abort each other as a deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from activities import catalog as catalog_activities
from activities.catalog import (
    CatalogActivities,
    CreateProductInput,
    UpdateProductInput,
    UpsertBatchInput,
    WriteResult,
)
from agora import db
from agora.config import Settings
from contracts.agora.catalog.v1 import Product
from tests.integration.conftest import Services
from tests.integration.consumerkit import outbox_events
from tests.integration.waiting import eventually
from workers.catalog.cache import ProductCache
from workers.catalog.model import COLUMNS, ProductData, from_row
from workers.catalog.reads import CatalogReads

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def catalog(settings: Settings, services: Services) -> AsyncIterator[CatalogActivities]:
    services("catalog")  # its start applies the catalog's migrations
    pool = await db.create_pool(settings, "catalog", size=3)
    redis = aioredis.from_url(settings.redis_url)
    yield CatalogActivities(pool, ProductCache(redis, "catalog:"))
    await redis.aclose()
    await pool.close()


def attempt() -> ActivityEnvironment:
    """An activity environment standing for one activity execution (all its attempts)."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_run_id=str(uuid.uuid4()), activity_id=str(uuid.uuid4())
    )
    return env


def product(sku: str, title: str) -> ProductData:
    return ProductData(
        sku=sku, title=title, category="test/retries", price_minor=500, currency="EUR"
    )


async def row(pool: asyncpg.Pool, sku: str) -> tuple[str, int]:
    found = await pool.fetchrow("SELECT title, version FROM products WHERE sku = $1", sku)
    assert found is not None
    return found["title"], found["version"]


async def events(pool: asyncpg.Pool, sku: str) -> list[str]:
    return await outbox_events(pool, "product", sku)


async def never_loaded() -> Product | None:
    raise AssertionError("expected a cache hit")


@contextlib.asynccontextmanager
async def redis_down(catalog: CatalogActivities) -> AsyncIterator[None]:
    """The activities' cache pointed at a Redis address nothing listens on, meanwhile."""
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    cache, catalog.cache = catalog.cache, ProductCache(dead, "catalog:")
    try:
        yield
    finally:
        catalog.cache = cache
        await dead.aclose()


async def created(catalog: CatalogActivities) -> str:
    sku = f"RETRY-{uuid.uuid4().hex[:10].upper()}"
    await attempt().run(catalog.create_product, CreateProductInput(product(sku, "first")))
    return sku


async def test_a_write_retried_after_another_admins_write_does_not_write_over_it(
    catalog: CatalogActivities,
) -> None:
    sku = await created(catalog)
    mine = attempt()
    first = await mine.run(catalog.update_product, UpdateProductInput(product(sku, "A")))
    assert (first.changed, await row(catalog.pool, sku)) == (True, ("A", 2))
    await attempt().run(catalog.update_product, UpdateProductInput(product(sku, "B")))
    # The first write's worker died before reporting it: Temporal runs it again.
    again = await mine.run(catalog.update_product, UpdateProductInput(product(sku, "A")))
    assert again == dataclasses.replace(first, cache_refreshed=False)  # the workflow refreshes
    assert await row(catalog.pool, sku) == ("B", 3)
    assert await events(catalog.pool, sku) == ["ProductCreated", "ProductUpdated", "ProductUpdated"]


async def test_a_version_guarded_write_retried_after_its_commit_answers_its_result(
    catalog: CatalogActivities,
) -> None:
    sku = await created(catalog)
    guarded = UpdateProductInput(product(sku, "guarded"), expected_version=1)
    mine = attempt()
    first: WriteResult = await mine.run(catalog.update_product, guarded)
    assert (first.version, first.changed) == (2, True)
    assert (await mine.run(catalog.update_product, guarded)).version == 2
    # Another request with the same guard is still a conflict: the product moved on.
    with pytest.raises(ApplicationError) as conflict:
        await attempt().run(catalog.update_product, guarded)
    assert conflict.value.type == "Conflict"
    assert conflict.value.category == ApplicationErrorCategory.BENIGN  # a caller's, not a fault


async def test_an_unchanged_write_retried_after_another_write_stays_unchanged(
    catalog: CatalogActivities,
) -> None:
    sku = await created(catalog)
    mine = attempt()
    same = UpdateProductInput(product(sku, "first"))
    assert (await mine.run(catalog.update_product, same)).changed is False
    await attempt().run(catalog.update_product, UpdateProductInput(product(sku, "edited")))
    assert (await mine.run(catalog.update_product, same)).changed is False
    assert await row(catalog.pool, sku) == ("edited", 2)


async def test_an_import_batch_retried_after_its_commit_keeps_later_edits_and_its_counts(
    catalog: CatalogActivities,
) -> None:
    skus = [f"RETRY-{uuid.uuid4().hex[:10].upper()}" for _ in range(3)]
    batch = UpsertBatchInput("retries", 0, [product(sku, "imported") for sku in skus])
    mine = attempt()
    first: Any = await mine.run(catalog.upsert_batch, batch)
    assert (first.created, first.updated, first.unchanged) == (3, 0, 0)
    await attempt().run(catalog.update_product, UpdateProductInput(product(skus[0], "edited")))
    again = await mine.run(catalog.upsert_batch, batch)
    assert again == first
    assert await row(catalog.pool, skus[0]) == ("edited", 2)
    assert await events(catalog.pool, skus[0]) == ["ProductCreated", "ProductUpdated"]


async def test_an_import_batch_retried_after_its_commit_caches_what_it_committed(
    catalog: CatalogActivities,
) -> None:
    # The first attempt committed, then died before its cache writes: the product's
    # old version stays cached, and orders are priced from the cache.
    sku = await created(catalog)
    old = await catalog.cache.get(sku, lambda _: never_loaded())
    assert old is not None and old.version == 1
    repriced = dataclasses.replace(product(sku, "first"), price_minor=900)
    batch = UpsertBatchInput("retries", 0, [repriced])
    mine = attempt()
    async with redis_down(catalog):
        with pytest.raises(RedisError):
            await mine.run(catalog.upsert_batch, batch)
    assert await row(catalog.pool, sku) == ("first", 2), "the batch committed"
    again: Any = await mine.run(catalog.upsert_batch, batch)
    assert again.updated == 1
    cached = await catalog.cache.get(sku, lambda _: never_loaded())
    assert cached is not None and cached.version == 2
    assert cached.price.amount_minor == 900


async def test_an_import_row_postgres_cannot_hold_is_a_row_error_not_a_failed_batch(
    catalog: CatalogActivities,
) -> None:
    good = f"RETRY-{uuid.uuid4().hex[:10].upper()}"
    rows = [product("BAD\x00SKU", "nul sku"), product(good, "fine"), product(good + "X", "a\x00b")]
    result: Any = await attempt().run(catalog.upsert_batch, UpsertBatchInput("nul", 0, rows))
    assert result.created == 1
    assert [e.sku for e in result.errors] == ["BAD\ufffdSKU", good + "X"]
    assert await row(catalog.pool, good) == ("fine", 1)


async def test_import_rows_with_lone_surrogates_are_row_errors_not_a_failed_batch(
    catalog: CatalogActivities,
) -> None:
    # Neither the sku (kept in the stored report, jsonb) nor a title (the row) can
    # hold one: each is its own refused row, and the batch commits the rest.
    good = f"RETRY-{uuid.uuid4().hex[:10].upper()}"
    rows = [product("BAD\ud800SKU", "surrogate sku"), product(good, "fine")]
    rows.append(product(good + "X", "lone \udc00 surrogate"))
    result: Any = await attempt().run(catalog.upsert_batch, UpsertBatchInput("lone", 0, rows))
    assert result.created == 1
    assert [e.sku for e in result.errors] == ["BAD\ufffdSKU", good + "X"]
    assert await row(catalog.pool, good) == ("fine", 1)


async def test_a_batch_with_a_refused_sku_retried_after_its_commit_answers_its_result(
    catalog: CatalogActivities,
) -> None:
    # The first attempt committed (the NUL sku a row error), then its cache writes
    # failed: the retry must read back the batch's rows without that sku.
    good = f"RETRY-{uuid.uuid4().hex[:10].upper()}"
    batch = UpsertBatchInput("nul-retry", 0, [product("BAD\x00SKU", "nul"), product(good, "ok")])
    mine = attempt()
    async with redis_down(catalog):
        with pytest.raises(RedisError):
            await mine.run(catalog.upsert_batch, batch)
    again: Any = await mine.run(catalog.upsert_batch, batch)
    assert (again.created, [e.sku for e in again.errors]) == (1, ["BAD\ufffdSKU"])
    cached = await catalog.cache.get(good, lambda _: never_loaded())
    assert cached is not None and cached.title == "ok"


async def test_a_create_only_batch_leaves_existing_products_as_they_are(
    catalog: CatalogActivities,
) -> None:
    # The demo seed, re-run by every `make run`, after an admin edited a product.
    edited = await created(catalog)
    await attempt().run(catalog.update_product, UpdateProductInput(product(edited, "edited")))
    new = f"RETRY-{uuid.uuid4().hex[:10].upper()}"
    batch = UpsertBatchInput(
        "seed", 0, [product(edited, "first"), product(new, "new")], create_only=True
    )
    result: Any = await attempt().run(catalog.upsert_batch, batch)
    assert (result.created, result.updated, result.unchanged) == (1, 0, 1)
    assert await row(catalog.pool, edited) == ("edited", 2)
    assert await events(catalog.pool, edited) == ["ProductCreated", "ProductUpdated"]
    assert await row(catalog.pool, new) == ("new", 1)


class CountingGets:
    """The real Redis client, counting the GETs that have answered."""

    def __init__(self, redis: aioredis.Redis):
        self._redis = redis
        self.gets = 0

    async def get(self, key: str) -> Any:
        value = await self._redis.get(key)
        self.gets += 1
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)


async def test_a_reader_cancelled_during_a_cache_fill_leaves_the_others_their_answer(
    catalog: CatalogActivities,
) -> None:
    sku = await created(catalog)
    redis = CountingGets(catalog.cache.redis)
    cache = ProductCache(redis, "catalog:")  # type: ignore[arg-type]
    await redis.delete(cache.key(sku))  # a miss: readers share one load
    release = asyncio.Event()
    loads: list[str] = []

    async def loader(wanted: str) -> Product | None:
        loads.append(wanted)
        await release.wait()  # a slow database read
        found = await catalog.pool.fetchrow(
            f"SELECT {COLUMNS} FROM products WHERE sku = $1", wanted
        )
        return from_row(found)

    first = asyncio.create_task(cache.get(sku, loader))

    async def loading() -> bool:
        return loads == [sku]

    await eventually(loading, what="the first reader's load", interval=0.01)
    second = asyncio.create_task(cache.get(sku, loader))

    async def both_missed() -> bool:
        # A reader that missed goes on to wait for the load in the same step.
        return redis.gets == 2

    await eventually(both_missed, what="the second reader's miss", interval=0.01)
    first.cancel()  # its deadline passed
    release.set()
    found = await second
    assert found is not None and found.sku == sku
    assert first.cancelled()
    assert loads == [sku], "the second reader waited for the first one's load"


async def test_the_reindex_listing_sees_a_product_created_a_moment_ago(
    catalog: CatalogActivities,
) -> None:
    # Search's backfill lists with inactive products; a page cached for the listing
    # would hide a product created since, and the new index would lack it.
    category = f"test/listing-{uuid.uuid4().hex[:8]}"
    reads = CatalogReads(catalog.pool, catalog.cache)
    first = dataclasses.replace(product(f"LIST-{uuid.uuid4().hex[:8]}", "one"), category=category)
    await attempt().run(catalog.create_product, CreateProductInput(first))
    before = await reads.list_page(category, True, 10, "")
    assert [p.sku for p in before.products] == [first.sku]
    second = dataclasses.replace(first, sku=first.sku + "-2", title="two")
    await attempt().run(catalog.create_product, CreateProductInput(second))
    after = await reads.list_page(category, True, 10, "")
    assert [p.sku for p in after.products] == [first.sku, second.sku]


async def test_the_reindex_listing_reads_products_past_a_stale_cache_entry(
    catalog: CatalogActivities,
) -> None:
    # A price change committed while Redis was unreachable leaves the old version
    # cached (until the workflow's refresh): the backfill must copy the new one.
    category = f"test/stale-{uuid.uuid4().hex[:8]}"
    first = dataclasses.replace(
        product(f"STALE-{uuid.uuid4().hex[:8]}", "first"), category=category
    )
    await attempt().run(catalog.create_product, CreateProductInput(first))
    sku = first.sku
    reads = CatalogReads(catalog.pool, catalog.cache)
    stale = await catalog.cache.get(sku, lambda _: never_loaded())
    assert stale is not None and stale.price.amount_minor == 500
    async with redis_down(catalog):
        repriced = dataclasses.replace(first, price_minor=900)
        result = await attempt().run(catalog.update_product, UpdateProductInput(repriced))
        assert result.cache_refreshed is False
    (listed,) = (await reads.list_page(category, True, 10, "")).products
    assert (listed.price.amount_minor, listed.version) == (900, 2)


async def test_two_imports_of_the_same_new_skus_in_opposite_orders_both_commit(
    catalog: CatalogActivities, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inserting new skus in a batch's own order, import A held X and wanted Y while B
    # held Y and wanted X: PostgreSQL aborted one batch as a deadlock (to be retried).
    x, y = (f"DEADLOCK-{uuid.uuid4().hex[:10].upper()}-{n}" for n in "AB")
    met = asyncio.Barrier(2)
    inserted_by: set[asyncio.Task[Any]] = set()
    insert = catalog_activities._insert

    async def meeting_after_the_first(*args: Any, **kwargs: Any) -> Any:
        made = await insert(*args, **kwargs)
        task = asyncio.current_task()
        assert task is not None
        if task not in inserted_by:  # both batches hold their first row before going on
            inserted_by.add(task)
            with contextlib.suppress(TimeoutError):  # the other waits on this one's row
                await asyncio.wait_for(met.wait(), 3)
        return made

    monkeypatch.setattr(catalog_activities, "_insert", meeting_after_the_first)
    batches = [[x, y], [y, x]]
    results: list[Any] = await asyncio.gather(
        *(
            attempt().run(
                catalog.upsert_batch,
                UpsertBatchInput(f"import-{n}", 0, [product(sku, "both") for sku in skus]),
            )
            for n, skus in enumerate(batches)
        )
    )
    assert sorted((r.created, r.unchanged) for r in results) == [(0, 2), (2, 0)]
    for sku in (x, y):
        assert await row(catalog.pool, sku) == ("both", 1)
        assert await events(catalog.pool, sku) == ["ProductCreated"]
