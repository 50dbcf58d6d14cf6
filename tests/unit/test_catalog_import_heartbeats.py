"""A batch of the catalog import heartbeats while it caches what it wrote, on its
first attempt and on the retry that caches an earlier attempt's commit again: with
Redis slow, caching a large batch outlasted the heartbeat timeout, every attempt."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.catalog import CatalogActivities, UpsertBatchInput
from workers.catalog.model import ProductData

N = 100
NOW = dt.datetime.now(dt.UTC)
ROWS = [
    {
        "sku": f"SKU-{i}",
        "title": "t",
        "description": "",
        "brand": "",
        "category": "a",
        "attributes": "{}",
        "price_minor": 1,
        "currency": "EUR",
        "active": True,
        "version": 1,
        "created_at": NOW,
        "updated_at": NOW,
    }
    for i in range(N)
]


class _CommittedBefore:
    """A connection to a batch an earlier attempt committed: its stored result, its rows."""

    async def execute(self, *_: Any) -> str:
        return "SELECT 1"

    async def fetchval(self, *_: Any) -> str:
        return json.dumps({"created": N, "updated": 0, "unchanged": 0, "errors": []})

    async def fetch(self, *_: Any) -> list[dict[str, Any]]:
        return ROWS

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield


class _Pool:
    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[_CommittedBefore]:
        yield _CommittedBefore()

    async def fetch(self, *_: Any) -> list[dict[str, Any]]:
        return ROWS  # the batch's committed rows


class _CancelledOnRelease(_Pool):
    """The import cancelled as the committed batch's connection goes back to the pool
    (asyncpg's release is an await a cancel can land on)."""

    def __init__(self, environment: ActivityEnvironment):
        self.environment = environment

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[_CommittedBefore]:
        yield _CommittedBefore()
        self.environment.cancel()  # as Temporal does on a heartbeat
        await asyncio.sleep(0)  # where the cancel lands


class _Cache:
    def __init__(self, beats: list[str]):
        self.beats = beats
        self.puts = 0

    async def put(self, _: Any) -> bool:
        self.puts += 1
        self.beats.append("put")
        return True


async def test_the_retry_that_caches_a_committed_batch_heartbeats_as_it_goes() -> None:
    beats: list[str] = []
    environment = ActivityEnvironment()
    environment.on_heartbeat = lambda *_: beats.append("beat")
    cache = _Cache(beats)
    activities = CatalogActivities(_Pool(), cache)  # type: ignore[arg-type]
    products = [
        ProductData(sku=r["sku"], title="t", category="a", price_minor=1, currency="EUR")
        for r in ROWS
    ]
    await environment.run(activities.upsert_batch, UpsertBatchInput("import-1", 0, products))
    assert cache.puts == N
    # A heartbeat before every 25 writes, not only once the writes are done.
    puts_between = [len(run) for run in "".join(b[0] for b in beats).split("b") if run]
    assert beats.count("beat") == N // 25 and max(puts_between) <= 25, puts_between


async def test_a_batch_cancelled_while_it_caches_caches_the_rest_before_it_ends() -> None:
    """The batch is committed: an entry left uncached would price orders at the old
    price until its TTL, and a cancelled activity is not retried."""
    environment = ActivityEnvironment()
    cached: list[str] = []

    class CancelledMidway:
        async def put(self, product: Any) -> bool:
            if len(cached) == 30 and not environment._cancelled:  # type: ignore[attr-defined]
                environment.cancel()  # as Temporal does on the next heartbeat
                await asyncio.sleep(0)  # where the cancel lands
            cached.append(product.sku)
            return True

    activities = CatalogActivities(_Pool(), CancelledMidway())  # type: ignore[arg-type]
    products = [
        ProductData(sku=r["sku"], title="t", category="a", price_minor=1, currency="EUR")
        for r in ROWS
    ]
    with pytest.raises(asyncio.CancelledError):
        await environment.run(activities.upsert_batch, UpsertBatchInput("import-1", 0, products))
    assert set(cached) == {r["sku"] for r in ROWS}


async def test_a_batch_cancelled_as_its_connection_goes_back_caches_what_it_committed() -> None:
    """Cancelled after the commit, before any entry was cached: cached all the same."""
    environment = ActivityEnvironment()
    cache = _Cache([])
    activities = CatalogActivities(_CancelledOnRelease(environment), cache)  # type: ignore[arg-type]
    products = [
        ProductData(sku=r["sku"], title="t", category="a", price_minor=1, currency="EUR")
        for r in ROWS
    ]
    with pytest.raises(asyncio.CancelledError):
        await environment.run(activities.upsert_batch, UpsertBatchInput("import-1", 0, products))
    assert cache.puts == N
