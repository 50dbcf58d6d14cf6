"""Search's Kafka consumer: catalog and inventory events into every write-target index.

Events are applied per partition batch (what one fetch returned for a
partition): per sku only the newest product and the newest stock level of the
batch are kept, and each write-target index gets one mget and one bulk request
for the whole batch instead of a read and a write per event. Updates are
idempotent merges (documents.py), so redelivery needs no dedupe table. The
time from an event's commit to its indexing is recorded (the pipeline's lag)
and so are indexing errors; the consumer retries those itself (agora.kafka),
and a payload that cannot be parsed goes to the dead-letter topic.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import TypeVar

import betterproto2
from elasticsearch import AsyncElasticsearch, BadRequestError
from opentelemetry import metrics

from agora.errors import PoisonMessage
from agora.kafka import ConsumerSpec, Decoded, parse_exact
from contracts import message_class
from contracts.agora.catalog.v1 import Product
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.inventory.v1 import StockLevel
from workers.search.documents import (
    Change,
    DocumentRejected,
    IndexMissing,
    merge_many,
    product_change,
    stock_change,
)
from workers.search.index import TARGETS_TTL_S, Indices

log = logging.getLogger(__name__)
_meter = metrics.get_meter("agora.search")
_lag = _meter.create_histogram(
    "agora_search_event_lag_seconds",
    unit="s",
    description="from an event's commit (occurred_at) to its indexing",
)
_errors = _meter.create_counter("agora_search_indexing_errors", description="failed index writes")
_indexed = _meter.create_counter("agora_search_indexed", description="documents changed by events")

GROUP = "search-indexer"
TOPICS = ("catalog.events", "inventory.events")
CATALOG_EVENTS = frozenset(
    {
        "agora.catalog.v1.ProductCreated",
        "agora.catalog.v1.ProductUpdated",
        "agora.catalog.v1.PriceChanged",
        "agora.catalog.v1.ProductDeactivated",
    }
)


def _payload(envelope: EventEnvelope) -> betterproto2.Message:
    try:
        return parse_exact(message_class(envelope.payload_type), envelope.payload)
    except Exception as error:
        raise PoisonMessage(f"unreadable {envelope.payload_type}: {error}") from error


_unknown_types: set[str] = set()


def _known(payload_type: str) -> bool:
    """Whether this version knows `payload_type`. An inventory event of a type it does
    not (a newer inventory's, in a rolling deploy) is skipped, as a catalog type it
    does not index is, not dead-lettered: it went to the DLQ, which nothing replays,
    and the next event of the sku brings its level all the same. Logged once a type."""
    try:
        message_class(payload_type)
    except KeyError:
        if payload_type not in _unknown_types:
            _unknown_types.add(payload_type)
            log.warning(
                "skipping events of a type this version does not know",
                extra={"payload_type": payload_type[:200]},
            )
        return False
    return True


def stock_levels(message: betterproto2.Message) -> list[StockLevel]:
    """The levels an inventory event carries (`stock_after`, one or many)."""
    after = getattr(message, "stock_after", None)
    if after is None:
        return []
    if isinstance(after, StockLevel):
        return [after]
    return [level for level in after if isinstance(level, StockLevel)]


class NoWriteTarget(Exception):
    """The write alias names no index: the batch would reach none (retried, not committed)."""


class SearchIndexer:
    def __init__(self, es: AsyncElasticsearch, indices: Indices):
        self.es = es
        self.indices = indices

    def spec(self) -> ConsumerSpec:
        return ConsumerSpec(group=GROUP, topics=TOPICS, batch_handler=self.handle_batch)

    async def handle_batch(self, batch: Sequence[Decoded]) -> None:
        """Index one partition's batch, written to each index with one mget and one bulk."""
        changes, indexed = _changes(batch)
        if not indexed:
            return
        try:
            await self._apply(changes)
        except (BadRequestError, DocumentRejected) as error:
            # Poison: the consumer hands a batch's events back one at a time, so the
            # refused one is counted once, when it comes alone.
            if len(batch) == 1:
                _errors.add(1, {"kind": "rejected"})
            raise PoisonMessage(f"index rejected the document: {error}") from error
        now = dt.datetime.now(dt.UTC)
        for envelope, record in indexed:
            if envelope.occurred_at is not None:
                lag = (now - envelope.occurred_at).total_seconds()
                _lag.record(max(lag, 0.0), {"topic": record.topic})

    async def _apply(self, changes: Sequence[Change]) -> None:
        targets = await self._write_targets()
        loaded_at = self.indices.targets_loaded_at
        written: set[str] = set()
        for attempt in range(2):
            try:
                while True:
                    for index in targets:
                        if index in written:
                            continue
                        for change in await merge_many(self.es, index, changes):
                            _indexed.add(1, {"source": change.source})
                        written.add(index)
                    # A batch that outlived its view of the write alias may have missed
                    # an index a reindex added meanwhile; the reindex copies stock from
                    # the old index only PROPAGATION_WAIT (three TTLs) later: look again.
                    if time.monotonic() - loaded_at <= TARGETS_TTL_S:
                        return
                    targets = await self._write_targets(fresh=True)
                    loaded_at = self.indices.targets_loaded_at
                    if written.issuperset(targets):
                        return
            except IndexMissing:
                # Dropped after a swap: our view of the write alias is stale.
                if attempt:
                    raise
                targets = await self._write_targets(fresh=True)
                loaded_at = self.indices.targets_loaded_at
            except (BadRequestError, DocumentRejected):
                raise  # not worth a retry: the caller makes it poison
            except Exception:
                _errors.add(1, {"kind": "transient"})
                raise

    async def _write_targets(self, *, fresh: bool = False) -> list[str]:
        targets = await self.indices.write_targets(fresh=fresh)
        if not targets:
            raise NoWriteTarget(f"alias {self.indices.write_alias} names no index")
        return targets


def _changes(batch: Sequence[Decoded]) -> tuple[list[Change], list[Decoded]]:
    """The batch's changes, per sku only the newest product and the newest stock level
    (an older one would lose the merge anyway), and the events that carried any."""
    products: dict[str, Product] = {}
    levels: dict[str, StockLevel] = {}
    indexed: list[Decoded] = []
    for envelope, record in batch:
        if envelope.payload_type in CATALOG_EVENTS:
            product = getattr(_payload(envelope), "product", None)
            if not isinstance(product, Product) or not product.sku:
                raise PoisonMessage(f"{envelope.event_type} without its product")
            _keep_newest(products, product.sku, product)
        elif envelope.producer == "inventory":
            if not _known(envelope.payload_type):
                continue  # as an unknown catalog type is: a newer inventory's (logged once)
            carried = stock_levels(_payload(envelope))
            if not carried:
                continue
            for level in carried:
                _keep_newest(levels, level.sku, level)
        else:
            continue
        indexed.append((envelope, record))
    changes = [
        *(product_change(p) for p in products.values()),
        *(stock_change(level) for level in levels.values()),
    ]
    return changes, indexed


Versioned = TypeVar("Versioned", Product, StockLevel)


def _keep_newest(held: dict[str, Versioned], sku: str, candidate: Versioned) -> None:
    current = held.get(sku)
    if current is None or candidate.version > current.version:
        held[sku] = candidate
