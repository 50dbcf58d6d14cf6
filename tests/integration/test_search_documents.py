"""Search documents under batches: the bulk merge gives the documents the one-by-one merge gives.

The indexer's batch handler runs in-process against the stack's Elasticsearch,
on an index of its own (a private prefix, so the running search service and
the other tests never see it). A batch is handed over as the consumer would
hand it: decoded envelopes in offset order.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import betterproto2
import pytest
import pytest_asyncio
from elasticsearch import AsyncElasticsearch

from agora.config import Settings
from agora.errors import PoisonMessage
from contracts import full_name
from contracts.agora.catalog.v1 import Product, ProductCreated, ProductUpdated
from contracts.agora.common.v1 import Money
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.inventory.v1 import StockLevel, StockRestocked
from tests.integration.consumerkit import decoded
from workers.search.consumer import SearchIndexer
from workers.search.documents import (
    EMPTY_PRODUCT,
    Change,
    DocumentRejected,
    IndexMissing,
    merge,
    merge_many,
    product_change,
    stock_change,
)
from workers.search.index import Indices

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def indices(es: AsyncElasticsearch) -> AsyncIterator[Indices]:
    """A private index behind its own read and write aliases (Indices.ensure is not
    used: it changes a cluster-wide setting the running search service relies on)."""
    indices = Indices(es, f"test-docs-{uuid.uuid4().hex[:8]}")
    name = indices.index_name("v1")
    await indices.create(name)
    await es.indices.update_aliases(
        actions=[
            {"add": {"index": name, "alias": indices.read_alias}},
            {"add": {"index": name, "alias": indices.write_alias}},
        ]
    )
    yield indices
    # Deleted by name: the cluster refuses wildcard deletes.
    names = list((await es.indices.get(index=f"{indices.prefix}-*")).body)
    await es.indices.delete(index=",".join(names))


async def new_index(indices: Indices) -> str:
    name = indices.index_name(uuid.uuid4().hex[:8])
    await indices.create(name)
    return name


def product(sku: str, version: int, title: str = "", price: int = 1000) -> Product:
    return Product(
        sku=sku,
        title=title or f"Thing v{version}",
        category="home/lamps",
        price=Money(amount_minor=price, currency="EUR"),
        active=True,
        version=version,
    )


def level(sku: str, version: int, available: int) -> StockLevel:
    return StockLevel(sku=sku, on_hand=available, available=available, version=version)


def event(producer: str, aggregate_id: str, payload: betterproto2.Message) -> EventEnvelope:
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        event_type=f"{producer}.{type(payload).__name__}",
        aggregate_type="product" if producer == "catalog" else "stock",
        aggregate_id=aggregate_id,
        sequence=1,
        occurred_at=dt.datetime.now(dt.UTC),
        producer=producer,
        payload=bytes(payload),
        payload_type=full_name(payload),
    )


def product_event(p: Product) -> EventEnvelope:
    payload = ProductCreated(product=p) if p.version == 1 else ProductUpdated(product=p)
    return event("catalog", p.sku, payload)


def stock_event(s: StockLevel) -> EventEnvelope:
    return event("inventory", s.sku, StockRestocked(sku=s.sku, quantity=1, stock_after=s))


async def document(es: AsyncElasticsearch, index: str, sku: str) -> dict[str, Any]:
    found = await es.get(index=index, id=sku)
    return dict(found["_source"])


async def test_a_batch_keeps_per_sku_the_newest_product_and_the_newest_stock(
    es: AsyncElasticsearch, indices: Indices
) -> None:
    lamp, stub = "LAMP-1", "STUB-1"
    batch = decoded(
        "catalog.events",
        product_event(product(lamp, 2, "Lamp, renamed")),
        stock_event(level(lamp, 1, 7)),
        stock_event(level(lamp, 3, 0)),
        product_event(product(lamp, 1, "Lamp")),  # late: loses to version 2
        stock_event(level(lamp, 2, 4)),  # late: loses to version 3
        stock_event(level(stub, 5, 9)),  # stock before its product: a hidden stub
    )
    await SearchIndexer(es, indices).handle_batch(batch)

    doc = await document(es, indices.read_alias, lamp)
    assert (doc["title"], doc["product_version"]) == ("Lamp, renamed", 2)
    assert (doc["available"], doc["in_stock"], doc["stock_version"]) == (0, False, 3)
    stub_doc = await document(es, indices.read_alias, stub)
    assert {k: stub_doc[k] for k in EMPTY_PRODUCT} == EMPTY_PRODUCT
    assert (stub_doc["available"], stub_doc["stock_version"]) == (9, 5)

    # Delivered again (a crash before the commit): nothing changes.
    before = await es.get(index=indices.read_alias, id=lamp)
    await SearchIndexer(es, indices).handle_batch(batch)
    after = await es.get(index=indices.read_alias, id=lamp)
    assert after["_seq_no"] == before["_seq_no"]


async def test_every_write_target_gets_the_batch(es: AsyncElasticsearch, indices: Indices) -> None:
    building = await new_index(indices)
    await indices.add_write_target(building)
    indexer = SearchIndexer(es, indices)
    await indexer.handle_batch(decoded("inventory.events", stock_event(level("MUG-1", 1, 3))))
    for index in (indices.index_name("v1"), building):
        assert (await document(es, index, "MUG-1"))["available"] == 3


async def test_bulk_and_one_by_one_merges_agree_whatever_the_order_and_the_batching(
    es: AsyncElasticsearch, indices: Indices
) -> None:
    skus = ["A", "B", "C"]
    changes: list[Change] = []
    for sku in skus:
        changes += [product_change(product(sku, v, price=100 * v)) for v in (1, 2, 3)]
        changes += [stock_change(level(sku, v, 10 - v)) for v in (1, 2, 3, 4)]
    one_by_one = await new_index(indices)
    for change in changes:
        await merge(es, one_by_one, change)
    expected = {sku: await document(es, one_by_one, sku) for sku in skus}

    shuffle = random.Random(7)
    for _ in range(3):
        target = await new_index(indices)
        order = changes[:]
        shuffle.shuffle(order)
        for batch in chunks(order, shuffle.randint(2, 8)):
            await merge_many(es, target, batch)
        await merge_many(es, target, order)  # and everything once more: changes nothing
        assert {sku: await document(es, target, sku) for sku in skus} == expected


def chunks(items: Sequence[Change], size: int) -> list[Sequence[Change]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class RacingElasticsearch(AsyncElasticsearch):
    """The real client, with another writer that gets in between our read and our write."""

    race: Change | None = None

    async def mget(self, *args: Any, **kwargs: Any) -> Any:
        found = await super().mget(*args, **kwargs)
        if self.race is not None:
            race, self.race = self.race, None
            await merge(self, kwargs["index"], race)
        return found


async def test_a_write_that_lost_a_race_is_merged_again_and_keeps_both(
    settings: Settings, indices: Indices
) -> None:
    index = indices.index_name("v1")
    racing = RacingElasticsearch(settings.elasticsearch_url)
    try:
        await merge(racing, index, stock_change(level("RACE-1", 1, 5)))
        racing.race = stock_change(level("RACE-1", 2, 1))  # newer stock, written meanwhile
        applied = await merge_many(racing, index, [product_change(product("RACE-1", 1, "Racer"))])
        doc = await document(racing, index, "RACE-1")
    finally:
        await racing.close()
    assert [c.source for c in applied] == ["catalog"]
    assert (doc["title"], doc["has_product"]) == ("Racer", True)
    assert (doc["available"], doc["stock_version"]) == (1, 2)


async def test_a_document_the_index_refuses_is_poison_and_a_dropped_index_is_reported(
    es: AsyncElasticsearch, indices: Indices
) -> None:
    index = indices.index_name("v1")
    unmapped = Change("BAD-1", "catalog", "product_version", 1, {"colour": "red"}, EMPTY_PRODUCT)
    with pytest.raises(DocumentRejected):
        await merge_many(es, index, [unmapped])

    dropped = await new_index(indices)
    await es.indices.delete(index=dropped)
    with pytest.raises(IndexMissing):
        await merge_many(es, dropped, [stock_change(level("GONE-1", 1, 1))])


async def test_an_event_without_its_product_makes_the_batch_poison(
    es: AsyncElasticsearch, indices: Indices
) -> None:
    broken = event("catalog", "X-1", ProductUpdated(product=None))
    with pytest.raises(PoisonMessage, match="without its product"):
        await SearchIndexer(es, indices).handle_batch(
            decoded("catalog.events", stock_event(level("X-1", 1, 1)), broken)
        )
