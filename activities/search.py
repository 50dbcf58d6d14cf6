"""Search's activities: the steps of a reindex (new index, backfill, alias swap, drop).

Each is idempotent: the new index's name comes from the workflow, creating it
twice is a no-op, the backfill writes with the same versioned merge as the
consumer (a re-copied document changes nothing) and resumes from its last
heartbeat's cursor, and the swap computes its actions from the aliases as they are
(its one call fails whole if they move in between, and a retry reads them again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk, async_scan
from temporalio import activity
from temporalio.exceptions import ApplicationError

from contracts.agora.catalog.v1 import CatalogServiceStub, ListProductsRequest, Product
from contracts.agora.common.v1 import PageRequest
from contracts.agora.inventory.v1 import BatchGetStockRequest, InventoryServiceStub
from workers.search.documents import (
    STOCK_FIELDS,
    Change,
    apply_product,
    copied_stock,
    copy_stock,
    merge_many,
    product_document,
    stock_fields,
)
from workers.search.index import Indices, StaleIndex

log = logging.getLogger(__name__)
BACKFILL_PAGE = 100  # catalog's largest page
# A page's gRPC calls (catalog's list, inventory's stock) each wait this long at most.
# The backfill heartbeats once per page, so its heartbeat timeout
# (workflows.search.BACKFILL_HEARTBEAT) must outlast a slow page's calls and writes.
PAGE_CALL_TIMEOUT_S = 30
STOCK_BATCH = 500  # stock levels carried over per mget + bulk
# A backfill of a large catalog runs for minutes: a line every this many pages
# (1,000 products) shows it advancing.
PROGRESS_PAGES = 10


@dataclass
class BeginReindexInput:
    version: str  # the new index's version suffix, e.g. "r20261125t150102-1a2b"


@dataclass
class BeginReindexResult:
    new_index: str
    source_index: str  # what searches read now; stock is copied from it ("" if none)


@dataclass
class BackfillInput:
    new_index: str
    source_index: str


@dataclass
class BackfillResult:
    copied: int
    merged: int  # documents an event had written first, merged by version instead


@dataclass
class SwapInput:
    new_index: str


@dataclass
class SwapResult:
    old_indices: list[str]


@dataclass
class DropInput:
    indices: list[str]


@dataclass
class _Checkpoint:
    cursor: str
    copied: int
    merged: int
    # The catalog's pages are done; the stock pass is under way (its own resumable step).
    pages_done: bool = False


class SearchActivities:
    def __init__(
        self,
        es: AsyncElasticsearch,
        indices: Indices,
        catalog: CatalogServiceStub,
        inventory: InventoryServiceStub,
    ):
        self.es = es
        self.indices = indices
        self.catalog = catalog
        self.inventory = inventory

    @activity.defn(name="search.begin_reindex")
    async def begin_reindex(self, data: BeginReindexInput) -> BeginReindexResult:
        """Create the new index and make it a write target, so events reach it from now on."""
        new_index = self.indices.index_name(data.version)
        # Elasticsearch's "exists" is true for an alias, so no index would be made and
        # adding the alias to it would fail on every retry: a run from before the
        # workflow refused such a version ends here.
        if await self.es.indices.exists_alias(name=new_index):
            raise ApplicationError(
                f"{new_index!r} is an alias, not an index to create",
                type="InvalidArgument",
                non_retryable=True,
            )
        readers = await self.indices.behind(self.indices.read_alias)
        # Rebuilt in place, the index searches read would be "reindexed" by a backfill
        # over itself and a swap that changes nothing: the run would report done
        # having rebuilt nothing (a new mapping needs a new index).
        if new_index in readers:
            raise ApplicationError(
                f"{new_index!r} is the index searches read already: reindex to a new version",
                type="InvalidArgument",
                non_retryable=True,
            )
        await self.indices.create(new_index)
        await self.indices.add_write_target(new_index)
        return BeginReindexResult(new_index, readers[0] if readers else "")

    @activity.defn(name="search.backfill")
    async def backfill(self, data: BackfillInput) -> BackfillResult:
        """Copy every product from the catalog (read API) into the new index.

        Documents are created in bulk; one that exists already was written by an
        event since the index became a write target, so it is merged by version
        instead (the newer product wins). Stock is taken from the current index and
        from inventory, merged by version: a reindex after the index was lost still
        has every product's stock.
        """
        details = activity.info().heartbeat_details
        state = _Checkpoint("", 0, 0)
        if details:
            state = _Checkpoint(**details[0])
        pages = 0
        while not state.pages_done:
            page = await self.catalog.list_products(
                ListProductsRequest(
                    include_inactive=True,
                    page=PageRequest(page_size=BACKFILL_PAGE, cursor=state.cursor),
                ),
                timeout=PAGE_CALL_TIMEOUT_S,
            )
            products = list(page.products)
            if products:
                merged = await self._copy(data, products)
                state.copied += len(products) - merged
                state.merged += merged
            state.cursor = page.page.next_cursor if page.page else ""
            state.pages_done = not state.cursor
            activity.heartbeat(state.__dict__)
            pages += 1
            if pages % PROGRESS_PAGES == 0 or state.pages_done:
                _log_progress(data, state, pages)
        await self._copy_stock(data, state)
        return BackfillResult(state.copied, state.merged)

    async def _copy_stock(self, data: BackfillInput, state: _Checkpoint) -> None:
        """Every document's stock, carried over from the current index by version.

        The pages copied stock for the products they listed; what they could miss:
        stock that came before its product (a stub, no catalog row yet), and a
        product created or moved behind the pages' cursor, which its event wrote
        into the new index with no stock. Merged by version, a copy never undoes a
        newer level an event wrote meanwhile. The source is refreshed first, so the
        scan sees every level written before the pass. Heartbeats per batch: a retry redoes
        this pass (idempotent), never the pages."""
        if not data.source_index:
            return
        # The scan is a search: it sees only refreshed documents. A level written
        # just before (not yet refreshed) would be copied at its older version.
        await self.es.indices.refresh(index=data.source_index)
        batch: list[Change] = []
        async for doc in async_scan(
            self.es, index=data.source_index, query={"query": {"match_all": {}}},
            _source=STOCK_FIELDS, size=STOCK_BATCH,
        ):  # fmt: skip
            batch.append(copied_stock(doc["_id"], doc["_source"]))
            if len(batch) >= STOCK_BATCH:
                await merge_many(self.es, data.new_index, batch)
                activity.heartbeat(state.__dict__)
                batch = []
        if batch:
            await merge_many(self.es, data.new_index, batch)

    async def _newest_stock(
        self, data: BackfillInput, products: list[Product]
    ) -> dict[str, dict[str, Any]]:
        """The products' stock fields, by sku: the newer (by version) of the current
        index's and inventory's. Inventory's alone after the index was lost."""
        skus = [p.sku for p in products]
        stock: dict[str, dict[str, Any]] = {}
        if data.source_index:
            found = await self.es.mget(
                index=data.source_index, ids=skus, source_includes=STOCK_FIELDS
            )
            for doc in found["docs"]:
                if doc.get("found"):
                    stock[doc["_id"]] = doc["_source"]
        levels = await self.inventory.batch_get_stock(
            BatchGetStockRequest(skus=skus), timeout=PAGE_CALL_TIMEOUT_S
        )
        for level in levels.stock:
            if level.version > int(stock.get(level.sku, {}).get("stock_version") or 0):
                stock[level.sku] = stock_fields(level)
        return stock

    async def _copy(self, data: BackfillInput, products: list[Product]) -> int:
        stock = await self._newest_stock(data, products)
        actions = [
            {
                "_op_type": "create",
                "_index": data.new_index,
                "_id": p.sku,
                "_source": product_document(p, stock.get(p.sku)),
            }
            for p in products
        ]
        _, errors = await async_bulk(self.es, actions, raise_on_error=False, stats_only=False)
        by_sku = {p.sku: p for p in products}
        merged = 0
        for error in errors if isinstance(errors, list) else []:
            item = error.get("create", {})
            if item.get("status") != 409:
                raise RuntimeError(f"backfill write failed: {item}")
            product = by_sku[item["_id"]]
            await apply_product(self.es, data.new_index, product)
            if product.sku in stock:
                await copy_stock(self.es, data.new_index, product.sku, stock[product.sku])
            merged += 1
        return merged

    @activity.defn(name="search.swap_alias")
    async def swap_alias(self, data: SwapInput) -> SwapResult:
        """Make the new index the one searches read, unless it has missed updates.

        Another reindex's swap (a run under another workflow id, or started by hand)
        takes this one's index out of the write alias: from then on events no longer
        reach it, so it must never be read. Refused for good, not retried: a retry
        cannot bring back the updates it missed. So is an index the other reindex has
        dropped since (its refresh's 404 is let through: the swap finds it in no alias)."""
        await self.es.options(ignore_status=404).indices.refresh(index=data.new_index)
        try:
            return SwapResult(await self.indices.swap(data.new_index))
        except StaleIndex as stale:
            raise ApplicationError(str(stale), type="Conflict", non_retryable=True) from None

    @activity.defn(name="search.drop_indices")
    async def drop_indices(self, data: DropInput) -> None:
        await self.indices.drop(data.indices)

    @activity.defn(name="search.abandon_reindex")
    async def abandon_reindex(self, data: SwapInput) -> bool:
        """The new index of a reindex cancelled or failed before its swap, deleted (and
        so out of the write alias); left alone if searches read it. True if deleted."""
        return await self.indices.abandon(data.new_index)


def _log_progress(data: BackfillInput, state: _Checkpoint, pages: int) -> None:
    # The module's logger, not activity.logger: agora.logs holds "temporalio.activity"
    # at WARNING. The line carries the activity's trace id all the same (its span).
    log.info(
        "backfill progress",
        extra={
            "workflow_id": activity.info().workflow_id,
            "new_index": data.new_index,
            "pages": pages,  # in this attempt (a retry resumes from the heartbeat's cursor)
            "copied": state.copied,
            "merged": state.merged,
            "pages_done": state.pages_done,
        },
    )
