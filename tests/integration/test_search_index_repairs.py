"""Search's indices on a real Elasticsearch: start-up repairs, facets and highlights.

Each test works under its own index prefix, so the platform's indices and aliases
are never touched.

* A write alias lost while the read alias stayed is put back at start-up, and so
  is a read alias lost while the write alias stayed (refused mid-reindex); a
  batch that finds no write target fails (and is retried) instead of counting
  as indexed.
* Two replicas creating the same index at once both start.
* A facet bucket counts what selecting it finds.
* A title prefix is highlighted like a whole word.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from elasticsearch import AsyncElasticsearch

from contracts import full_name
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.inventory.v1 import StockLevel, StockRestocked
from contracts.agora.search.v1 import FacetField, SearchFilters, SearchRequest
from tests.integration.consumerkit import decoded
from workers.search.api import SearchApi
from workers.search.consumer import NoWriteTarget, SearchIndexer
from workers.search.documents import category_path
from workers.search.index import FIRST_VERSION, AliasLost, Indices

pytestmark = [pytest.mark.integration]
AUTO_CREATE = "action.auto_create_index"


@pytest_asyncio.fixture
async def indices(es: AsyncElasticsearch) -> AsyncIterator[Indices]:
    """Indices under a test-only prefix; deleted afterwards, with the cluster's
    auto-create rule put back as it was (start-up adds the prefix to it)."""
    before = await es.cluster.get_settings(flat_settings=True)
    prefix = f"repair-test-{uuid.uuid4().hex[:8]}"
    yield Indices(es, prefix)
    made = await es.indices.get(index=f"{prefix}-*", expand_wildcards="all")
    if made.body:  # by name: the cluster refuses wildcard deletes
        await es.indices.delete(index=",".join(made.body))
    await es.cluster.put_settings(persistent={AUTO_CREATE: before["persistent"].get(AUTO_CREATE)})
    await es.cluster.put_settings(transient={AUTO_CREATE: before["transient"].get(AUTO_CREATE)})


async def test_start_up_puts_a_lost_write_alias_back_on_the_read_index(indices: Indices) -> None:
    await indices.ensure()
    first = indices.index_name(FIRST_VERSION)
    await indices.es.indices.update_aliases(
        actions=[{"remove": {"index": first, "alias": indices.write_alias}}]
    )
    assert await indices.behind(indices.write_alias) == []

    await indices.ensure()

    assert await indices.behind(indices.write_alias) == [first]
    assert await indices.behind(indices.read_alias) == [first]


async def test_start_up_puts_a_lost_read_alias_back_on_the_write_index(indices: Indices) -> None:
    # After a reindex the first index is gone; a read alias then lost must not look like
    # a fresh cluster (a new, empty first index served while events went to both).
    current = indices.index_name("r1")
    await indices.create(current)
    await indices.es.indices.put_alias(index=current, name=indices.write_alias)
    assert await indices.behind(indices.read_alias) == []

    await indices.ensure()

    assert await indices.behind(indices.read_alias) == [current]
    assert await indices.behind(indices.write_alias) == [current]
    assert not await indices.es.indices.exists(index=indices.index_name(FIRST_VERSION))


async def test_start_up_refuses_a_lost_read_alias_mid_reindex(indices: Indices) -> None:
    old, new = indices.index_name("r1"), indices.index_name("r2")
    for name in (old, new):
        await indices.create(name)
        await indices.es.indices.put_alias(index=name, name=indices.write_alias)

    with pytest.raises(AliasLost, match=indices.read_alias):
        await indices.ensure()

    assert await indices.behind(indices.read_alias) == []
    assert await indices.behind(indices.write_alias) == [old, new]
    assert not await indices.es.indices.exists(index=indices.index_name(FIRST_VERSION))


async def test_a_batch_with_no_write_target_fails_instead_of_counting_as_indexed(
    indices: Indices,
) -> None:
    first = indices.index_name(FIRST_VERSION)
    await indices.create(first)
    await indices.es.indices.put_alias(index=first, name=indices.read_alias)
    indexer = SearchIndexer(indices.es, indices)
    batch = decoded("inventory.events", _stock_event("SKU-REPAIR-1", version=1, available=3))

    with pytest.raises(NoWriteTarget):
        await indexer.handle_batch(batch)

    await indices.restore_write_alias()
    await indexer.handle_batch(batch)  # the retry, once the alias is back
    stored = await indices.es.get(index=first, id="SKU-REPAIR-1")
    assert stored["_source"]["available"] == 3


async def test_replicas_creating_the_same_index_at_once_both_start(indices: Indices) -> None:
    name = indices.index_name(FIRST_VERSION)

    created = await asyncio.gather(*(indices.create(name) for _ in range(4)))

    assert sorted(created) == [False, False, False, True]


async def test_a_facet_bucket_counts_what_selecting_it_finds(indices: Indices) -> None:
    name = await _searchable(indices)
    products = [
        ("Acme", "home/lighting"),
        ("Acme", "home/lighting/lamps"),
        ("ACME", "home/lighting/lamps"),
    ]
    for i, (brand, category) in enumerate(products):
        await _index(indices.es, name, f"SKU-FACET-{i}", "Desk lamp", brand, category)
    await indices.es.indices.refresh(index=name)
    api = SearchApi(indices.es, indices)

    faceted = await api.search(SearchRequest(facets=[FacetField.BRAND, FacetField.CATEGORY]))
    brands, categories = ({b.key: b.count for b in facet.buckets} for facet in faceted.facets)

    assert brands == {"Acme": 3}
    assert categories == {"home": 3, "home/lighting": 3, "home/lighting/lamps": 2}
    for brand, count in brands.items():
        chosen = await api.search(SearchRequest(filters=SearchFilters(brands=[brand])))
        assert chosen.total_hits == count, brand
    for category, count in categories.items():
        chosen = await api.search(SearchRequest(filters=SearchFilters(categories=[category])))
        assert chosen.total_hits == count, category


async def test_a_title_prefix_is_highlighted(indices: Indices) -> None:
    name = await _searchable(indices)
    await _index(indices.es, name, "SKU-HIGHLIGHT", "Desk lamp", "Acme", "home")
    await indices.es.indices.refresh(index=name)

    answer = await SearchApi(indices.es, indices).search(
        SearchRequest(query="desk la", highlight=True)
    )

    [hit] = answer.hits
    title = {h.field: h.fragments for h in hit.highlights}["title"]
    assert title == ["<em>Desk</em> <em>lamp</em>"]


async def test_a_capitalised_greek_or_turkish_prefix_finds_its_title(indices: Indices) -> None:
    # Typed in capitals, the last word is lower-cased as the index's analyzer did it:
    # Python's lower() made ΠΡΟΣ "προς" (final sigma) and İSTA "i̇sta", matching nothing.
    name = await _searchable(indices)
    await _index(indices.es, name, "SKU-GREEK", "ΠΡΟΣΦΟΡΑ lamp", "Acme", "home")
    await _index(indices.es, name, "SKU-TURKISH", "İSTANBUL rug", "Acme", "home")
    await indices.es.indices.refresh(index=name)
    api = SearchApi(indices.es, indices)

    for typed, sku in (("ΠΡΟΣ", "SKU-GREEK"), ("İSTA", "SKU-TURKISH")):
        answer = await api.search(SearchRequest(query=typed))
        assert [hit.sku for hit in answer.hits] == [sku], typed


async def _searchable(indices: Indices) -> str:
    await indices.ensure()
    return indices.index_name(FIRST_VERSION)


async def _index(
    es: AsyncElasticsearch, index: str, sku: str, title: str, brand: str, category: str
) -> None:
    document: dict[str, Any] = {
        "sku": sku,
        "title": title,
        "brand": brand,
        "category": category,
        "category_path": category_path(category),
        "price_minor": 1000,
        "currency": "EUR",
        "active": True,
        "has_product": True,
        "in_stock": True,
    }
    await es.index(index=index, id=sku, document=document)


def _stock_event(sku: str, version: int, available: int) -> EventEnvelope:
    payload = StockRestocked(
        sku=sku,
        quantity=available,
        stock_after=StockLevel(sku=sku, on_hand=available, available=available, version=version),
    )
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        event_type="inventory.StockRestocked",
        aggregate_type="stock",
        aggregate_id=sku,
        sequence=version,
        occurred_at=dt.datetime.now(dt.UTC),
        producer="inventory",
        payload=bytes(payload),
        payload_type=full_name(payload),
    )
