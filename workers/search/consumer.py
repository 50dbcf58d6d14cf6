"""Search's Kafka consumer: catalog and inventory events into every write-target index.

Updates are idempotent merges (documents.py), so redelivery needs no dedupe
table. The time from an event's commit to its indexing is recorded (the
pipeline's lag) and so are indexing errors; the consumer retries those itself
(agora.kafka), and a payload that cannot be parsed goes to the dead-letter topic.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import betterproto2
from aiokafka import ConsumerRecord
from elasticsearch import AsyncElasticsearch, BadRequestError
from opentelemetry import metrics

from agora.errors import PoisonMessage
from agora.kafka import ConsumerSpec
from contracts import message_class
from contracts.agora.catalog.v1 import Product
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.inventory.v1 import StockLevel
from workers.search.documents import IndexMissing, apply_product, apply_stock
from workers.search.index import Indices

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
        return message_class(envelope.payload_type).parse(envelope.payload)
    except Exception as error:
        raise PoisonMessage(f"unreadable {envelope.payload_type}: {error}") from error


def stock_levels(message: betterproto2.Message) -> list[StockLevel]:
    """The levels an inventory event carries (`stock_after`, one or many)."""
    after = getattr(message, "stock_after", None)
    if after is None:
        return []
    if isinstance(after, StockLevel):
        return [after]
    return [level for level in after if isinstance(level, StockLevel)]


class SearchIndexer:
    def __init__(self, es: AsyncElasticsearch, indices: Indices):
        self.es = es
        self.indices = indices

    def spec(self) -> ConsumerSpec:
        return ConsumerSpec(group=GROUP, topics=TOPICS, handler=self.handle)

    async def handle(self, envelope: EventEnvelope, record: ConsumerRecord) -> None:
        if envelope.payload_type in CATALOG_EVENTS:
            product = getattr(_payload(envelope), "product", None)
            if not isinstance(product, Product) or not product.sku:
                raise PoisonMessage(f"{envelope.event_type} without its product")
            await self._apply([product], [])
        elif envelope.producer == "inventory":
            levels = stock_levels(_payload(envelope))
            if not levels:
                return
            await self._apply([], levels)
        else:
            return
        if envelope.occurred_at is not None:
            lag = (dt.datetime.now(dt.UTC) - envelope.occurred_at).total_seconds()
            _lag.record(max(lag, 0.0), {"topic": record.topic})

    async def _apply(self, products: Sequence[Product], levels: Sequence[StockLevel]) -> None:
        targets = await self.indices.write_targets()
        for attempt in range(2):
            try:
                for index in targets:
                    for product in products:
                        if await apply_product(self.es, index, product):
                            _indexed.add(1, {"source": "catalog"})
                    for level in levels:
                        if await apply_stock(self.es, index, level):
                            _indexed.add(1, {"source": "inventory"})
                return
            except IndexMissing:
                # Dropped after a swap: our view of the write alias is stale.
                if attempt:
                    raise
                targets = await self.indices.write_targets(fresh=True)
            except BadRequestError as error:
                _errors.add(1, {"kind": "rejected"})
                raise PoisonMessage(f"index rejected the document: {error}") from error
            except Exception:
                _errors.add(1, {"kind": "transient"})
                raise
