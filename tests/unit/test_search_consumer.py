"""The search indexer writes every index a reindex added, even when its batch was slow."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from aiokafka import ConsumerRecord

from agora.errors import PoisonMessage
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.inventory.v1 import StockLevel, StockRestocked
from workers.search import consumer
from workers.search.documents import Change, stock_change
from workers.search.index import TARGETS_TTL_S


class Alias:
    """The write alias as the indexer sees it: a cached view with its load time."""

    def __init__(self, indices: list[str], loaded_ago_s: float = 0.0):
        self.indices = indices
        self.view = list(indices)
        self.targets_loaded_at = time.monotonic() - loaded_ago_s

    async def write_targets(self, *, fresh: bool = False) -> list[str]:
        if fresh:
            self.view = list(self.indices)
            self.targets_loaded_at = time.monotonic()
        return self.view


def change() -> Change:
    return stock_change(StockLevel(sku="SKU-1", on_hand=5, reserved=5, available=0, version=7))


async def test_a_slow_batch_also_writes_the_index_a_reindex_added_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The view was read longer ago than the cache's TTL (the batch took that long);
    # while the batch wrote the old index, a reindex added the new one to the alias.
    alias = Alias(["products-v1"], loaded_ago_s=TARGETS_TTL_S * 2)
    written: list[str] = []

    async def merge_many(_es: object, index: str, changes: Sequence[Change]) -> list[Change]:
        written.append(index)
        if index == "products-v1":
            alias.indices.append("products-v2")
        return list(changes)

    monkeypatch.setattr(consumer, "merge_many", merge_many)
    indexer = consumer.SearchIndexer(es=None, indices=alias)  # type: ignore[arg-type]
    await indexer._apply([change()])
    assert written == ["products-v1", "products-v2"]


async def test_a_batch_within_the_ttl_trusts_its_view(monkeypatch: pytest.MonkeyPatch) -> None:
    alias = Alias(["products-v1"])
    written: list[str] = []

    async def merge_many(_es: object, index: str, changes: Sequence[Change]) -> list[Change]:
        written.append(index)
        return list(changes)

    monkeypatch.setattr(consumer, "merge_many", merge_many)
    fetches: list[bool] = []
    original = alias.write_targets

    async def counted(*, fresh: bool = False) -> list[str]:
        fetches.append(fresh)
        return await original(fresh=fresh)

    monkeypatch.setattr(alias, "write_targets", counted)
    indexer = consumer.SearchIndexer(es=None, indices=alias)  # type: ignore[arg-type]
    await indexer._apply([change()])
    assert written == ["products-v1"] and fetches == [False], "no extra alias read"


def test_an_inventory_event_of_a_type_this_version_does_not_know_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A newer inventory's event in a rolling deploy went to the dead-letter topic.
    known = EventEnvelope(
        producer="inventory",
        payload_type="agora.inventory.v1.StockRestocked",
        payload=bytes(StockRestocked(stock_after=StockLevel(sku="SKU-1", on_hand=3, version=2))),
    )
    newer = EventEnvelope(producer="inventory", payload_type="agora.inventory.v1.StockAudited")
    batch = [(newer, record(0)), (known, record(1)), (newer, record(2))]
    changes, indexed = consumer._changes(batch)  # type: ignore[arg-type]
    assert [change.sku for change in changes] == ["SKU-1"] and indexed == [batch[1]]
    warned = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warned) == 1, "once a type"
    # A known type that cannot be read is still poison.
    broken = EventEnvelope(
        producer="inventory",
        payload_type="agora.inventory.v1.StockRestocked",
        payload=b"\n" + b"\xff" * 10,
    )
    with pytest.raises(PoisonMessage):
        consumer._changes([(broken, record(3))])  # type: ignore[list-item]


def record(offset: int) -> object:
    return ConsumerRecord("inventory.events", 0, offset, 0, 0, b"k", b"", None, 0, 0, [])
