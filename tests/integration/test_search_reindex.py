"""Reindex: a new index version is built from the catalog and swapped in under live updates.

Prices keep changing through the admin route for the whole reindex; once it is
done, searches read the new index, the old one is gone, and every product's
indexed price is the catalog's latest: no update was lost during the swap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from elasticsearch import AsyncElasticsearch, NotFoundError
from temporalio.client import WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.search import BackfillInput, BeginReindexInput, SearchActivities, SwapInput
from agora.config import Settings
from agora.grpc import Channels
from contracts.agora.catalog.v1 import CatalogServiceStub
from contracts.agora.inventory.v1 import InventoryServiceStub
from gateway.deps import Gateway
from tests.integration.catalogkit import CatalogApi
from tests.integration.conftest import Services
from tests.integration.gatewaykit import TokenMinter, running_gateway
from tests.integration.waiting import eventually
from workers.search.index import Indices, StaleIndex
from workflows.inventory import TASK_QUEUE as INVENTORY_QUEUE
from workflows.inventory import RestockInput, RestockWorkflow, restock_workflow_id
from workflows.search import (
    REINDEX_WORKFLOW_ID,
    TASK_QUEUE,
    ReindexInput,
    ReindexProgress,
    ReindexWorkflow,
)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]
PRODUCTS = 12


@pytest_asyncio.fixture(scope="module")
async def running(
    settings: Settings, services: Services
) -> AsyncIterator[tuple[Gateway, CatalogApi]]:
    for service in ("identity", "catalog", "search", "inventory"):
        services(service)
    minter = TokenMinter(settings)
    gateway: tuple[Gateway, TestClient]
    async with running_gateway(settings, minter) as gateway:
        yield gateway[0], CatalogApi(gateway[1], minter)


async def restock(gw: Gateway, sku: str, quantity: int) -> None:
    data = RestockInput(key=f"reindex-test:{uuid.uuid4()}", sku=sku, quantity=quantity)
    await gw.upstream.temporal.execute_workflow(
        RestockWorkflow.run, data, id=restock_workflow_id(data.key), task_queue=INVENTORY_QUEUE
    )


async def start_reindex(gw: Gateway) -> WorkflowHandle[Any, ReindexProgress]:
    """A new index version, the only reindex running (its workflow id is fixed)."""
    return await gw.upstream.temporal.start_workflow(
        ReindexWorkflow.run,
        ReindexInput(version=f"t{uuid.uuid4().hex[:8]}"),
        id=REINDEX_WORKFLOW_ID,
        task_queue=TASK_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )


def changed_during_backfill_or_swap(phases: list[str]) -> bool:
    """Whether a price change was sent and acknowledged between the backfill's start
    and the swap's end: the phase read before it (after the change before) and the
    one read after it are both backfilling or swapping."""
    overlapping = {"backfilling", "swapping"}
    return any({before, after} <= overlapping for before, after in itertools.pairwise(phases))


async def test_reindex_swaps_the_alias_under_concurrent_updates_and_loses_nothing(
    running: tuple[Gateway, CatalogApi], settings: Settings
) -> None:
    gw, api = running
    tag = f"zq{uuid.uuid4().hex[:10]}"
    skus = [(await api.create(title=f"{tag} Item {i}"))["sku"] for i in range(PRODUCTS)]

    async def all_indexed() -> bool:
        return (await api.search(q=tag, limit="100"))["total"] == PRODUCTS

    await eventually(all_indexed, what="the products in the index")
    es = AsyncElasticsearch(settings.elasticsearch_url)
    alias = settings.search_index_prefix
    before = set((await es.indices.get_alias(name=alias)).body)

    handle = await start_reindex(gw)
    latest: dict[str, int] = {}
    # The reindex's phase read right after each price change was acknowledged.
    phases: list[str] = []
    searches_ok = 0
    # Stopped between requests, never cancelled inside one: a price change cancelled
    # after the catalog took it would leave `latest` behind the catalog.
    stop = asyncio.Event()

    async def keep_updating() -> None:
        nonlocal searches_ok
        price = 100
        while not stop.is_set():
            for sku in skus:
                price += 1
                await api.set_price(sku, price)
                latest[sku] = price
                phases.append((await handle.query(ReindexWorkflow.progress)).phase)
            # Searches keep being answered throughout, swap included.
            assert (await api.search(q=tag, limit="100"))["total"] == PRODUCTS
            searches_ok += 1

    updater = asyncio.create_task(keep_updating())
    try:
        progress = await asyncio.wait_for(handle.result(), timeout=180)
    finally:
        stop.set()
        await asyncio.wait_for(updater, timeout=60)
    assert searches_ok > 0
    assert progress.phase == "done"
    seen = {phase: phases.count(phase) for phase in dict.fromkeys(phases)}
    assert changed_during_backfill_or_swap(phases), f"changes acknowledged per phase: {seen}"
    after = set((await es.indices.get_alias(name=alias)).body)
    assert after == {progress.new_index} and after != before
    for old in before:
        assert not await es.indices.exists(index=old)
    await es.close()

    async def converged() -> dict[str, Any] | None:
        hits = (await api.search(q=tag, limit="100"))["hits"]
        indexed = {h["sku"]: h["price"]["amount_minor"] for h in hits}
        return indexed if indexed == latest else None

    await eventually(converged, within=30, what="every latest price in the new index")


async def test_stock_that_arrived_before_its_product_survives_a_reindex(
    running: tuple[Gateway, CatalogApi], settings: Settings
) -> None:
    gw, api = running
    es = AsyncElasticsearch(settings.elasticsearch_url)
    sku = f"STUB-{uuid.uuid4().hex[:10]}"
    # Stock first: search holds a hidden stub (no product yet) with the level.
    await restock(gw, sku, 7)

    async def stub_indexed() -> bool:
        found = await es.options(ignore_status=404).get(index=settings.search_index_prefix, id=sku)
        return bool(found.get("found")) and found["_source"]["available"] == 7

    await eventually(stub_indexed, what="the stock-only stub")
    handle = await start_reindex(gw)
    assert (await asyncio.wait_for(handle.result(), timeout=180)).phase == "done"
    await es.close()

    # The product comes after the swap: it is found in stock, from the carried-over stub.
    tag = f"zs{uuid.uuid4().hex[:10]}"
    await api.create(sku=sku, title=f"{tag} Lantern")

    async def in_stock() -> dict[str, Any] | None:
        hits = (await api.search(q=tag, in_stock="true"))["hits"]
        return hits[0] if hits and hits[0]["sku"] == sku else None

    hit = await eventually(in_stock, what="the product in stock after the reindex")
    assert hit["in_stock"] is True


async def test_a_backfill_resumed_after_its_pages_carries_every_documents_stock(
    running: tuple[Gateway, CatalogApi], settings: Settings
) -> None:
    # A retry after the pages resumes at the stock pass (the pages are not redone),
    # and that pass carries every document's stock, not only stock-only stubs.
    gw, api = running
    sku = f"BF-{uuid.uuid4().hex[:10]}"
    await api.create(sku=sku, title="Backfill lamp")
    await restock(gw, sku, 5)
    es = AsyncElasticsearch(settings.elasticsearch_url)
    channels = Channels(settings, caller="search")
    target = f"backfill-test-{uuid.uuid4().hex[:8]}"
    try:

        async def stocked() -> bool:
            found = await es.options(ignore_status=404).get(
                index=settings.search_index_prefix, id=sku
            )
            return bool(found.get("found")) and found["_source"]["available"] == 5

        await eventually(stocked, what="the product's stock indexed")
        [source] = list((await es.indices.get_alias(name=settings.search_index_prefix)).body)
        indices = Indices(es, settings.search_index_prefix)
        await indices.create(target)
        activities = SearchActivities(es, indices, *_stubs(channels))
        env = ActivityEnvironment()
        resumed = {"cursor": "", "copied": 0, "merged": 0, "pages_done": True}
        env.info = dataclasses.replace(env.info, heartbeat_details=[resumed])
        await es.indices.refresh(index=source)
        held = (await es.count(index=source))["count"]
        await env.run(activities.backfill, BackfillInput(target, source))
        await es.indices.refresh(index=target)
        copied = (await es.get(index=target, id=sku))["_source"]
        assert (copied["available"], copied["in_stock"]) == (5, True)
        # Every document the source held is in the target (the live source may grow
        # meanwhile, and the target is not its write target here).
        assert held <= (await es.count(index=target))["count"]
    finally:
        await es.options(ignore_status=404).indices.delete(index=target)
        channels.close()
        await es.close()


async def test_a_backfill_without_an_index_to_copy_from_takes_stock_from_inventory(
    running: tuple[Gateway, CatalogApi], settings: Settings
) -> None:
    # The index was lost (no source to copy stock from): the stock comes from inventory.
    gw, api = running
    sku = f"BF-{uuid.uuid4().hex[:10]}"
    await api.create(sku=sku, title="Backfill lamp")
    await restock(gw, sku, 4)
    es = AsyncElasticsearch(settings.elasticsearch_url)
    channels = Channels(settings, caller="search")
    target = f"backfill-test-{uuid.uuid4().hex[:8]}"
    try:
        indices = Indices(es, settings.search_index_prefix)
        await indices.create(target)
        activities = SearchActivities(es, indices, *_stubs(channels))
        await ActivityEnvironment().run(activities.backfill, BackfillInput(target, ""))
        copied = (await es.get(index=target, id=sku))["_source"]
        assert (copied["available"], copied["in_stock"]) == (4, True)
    finally:
        await es.options(ignore_status=404).indices.delete(index=target)
        channels.close()
        await es.close()


def _stubs(channels: Channels) -> tuple[CatalogServiceStub, InventoryServiceStub]:
    return CatalogServiceStub(channels.get("catalog")), InventoryServiceStub(
        channels.get("inventory")
    )


async def test_begin_reindex_refuses_at_once_a_version_that_names_an_alias(
    settings: Settings,
) -> None:
    # `<prefix>-write` exists as an alias, so no index would be created and adding the
    # alias to it would fail on every retry: a run from before the workflow's own check
    # must end instead.
    es = AsyncElasticsearch(settings.elasticsearch_url)
    channels = Channels(settings, caller="search")
    indices = Indices(es, f"alias-test-{uuid.uuid4().hex[:8]}")
    first = indices.index_name("v1")
    try:
        await indices.create(first)
        await es.indices.update_aliases(
            actions=[
                {"add": {"index": first, "alias": indices.read_alias}},
                {"add": {"index": first, "alias": indices.write_alias}},
            ]
        )
        activities = SearchActivities(es, indices, *_stubs(channels))
        with pytest.raises(ApplicationError) as refused:
            await ActivityEnvironment().run(activities.begin_reindex, BeginReindexInput("write"))
        assert (refused.value.type, refused.value.non_retryable) == ("InvalidArgument", True)
        assert await indices.behind(indices.write_alias) == [first]
    finally:
        await es.options(ignore_status=404).indices.delete(index=first)
        channels.close()
        await es.close()


class Deployment:
    """A deployment of its own (its own index prefix), for alias tests: `live` puts both
    aliases on its v1."""

    def __init__(self, es: AsyncElasticsearch, channels: Channels):
        self.indices = Indices(es, f"swap-test-{uuid.uuid4().hex[:8]}")
        self.activities = SearchActivities(es, self.indices, *_stubs(channels))
        self.made: list[str] = []

    async def index(self, version: str, *, write: bool = True) -> str:
        name = self.indices.index_name(version)
        await self.indices.create(name)
        self.made.append(name)
        if write:
            await self.indices.add_write_target(name)
        return name

    async def live(self) -> str:
        first = await self.index("v1", write=False)
        await self.indices.es.indices.update_aliases(
            actions=[
                {"add": {"index": first, "alias": self.indices.read_alias}},
                {"add": {"index": first, "alias": self.indices.write_alias}},
            ]
        )
        return first

    async def aliases(self) -> tuple[list[str], list[str]]:
        """The indices behind the read alias and behind the write alias."""
        return (
            await self.indices.behind(self.indices.read_alias),
            await self.indices.behind(self.indices.write_alias),
        )


@pytest_asyncio.fixture
async def deployment(settings: Settings) -> AsyncIterator[Deployment]:
    es = AsyncElasticsearch(settings.elasticsearch_url)
    channels = Channels(settings, caller="search")
    made = Deployment(es, channels)
    try:
        yield made
    finally:
        for name in made.made:
            await es.options(ignore_status=404).indices.delete(index=name)
        channels.close()
        await es.close()


async def test_begin_reindex_refuses_at_once_the_version_searches_read(
    deployment: Deployment,
) -> None:
    # Rebuilt in place, it would be backfilled over itself and "swapped" to itself:
    # the reindex would report done having rebuilt nothing.
    live = await deployment.live()
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(
            deployment.activities.begin_reindex, BeginReindexInput("v1")
        )
    assert (refused.value.type, refused.value.non_retryable) == ("InvalidArgument", True)
    assert "searches read" in refused.value.message
    assert await deployment.aliases() == ([live], [live])


async def test_an_abandoned_reindex_deletes_its_index_unless_searches_read_it(
    deployment: Deployment,
) -> None:
    # Cancelled before its swap: its index leaves the write alias (events no longer
    # written twice) and Elasticsearch; the live one is untouched.
    live = await deployment.live()
    begun = await deployment.index("ra")
    env = ActivityEnvironment()
    assert await env.run(deployment.activities.abandon_reindex, SwapInput(begun)) is True
    assert await deployment.aliases() == ([live], [live])
    assert not await deployment.indices.es.indices.exists(index=begun)
    # Swapped in after all (a cancel that came too late): it stays, it is what searches read.
    swapped = await deployment.index("rb")
    await env.run(deployment.activities.swap_alias, SwapInput(swapped))
    assert await env.run(deployment.activities.abandon_reindex, SwapInput(swapped)) is False
    assert await deployment.aliases() == ([swapped], [swapped])


async def test_a_swap_refuses_an_index_another_reindexs_swap_took_out_of_the_write_alias(
    deployment: Deployment,
) -> None:
    # Two reindexes at once: the first swap leaves only its own index in the write
    # alias, so the second one's has missed every update since and must not go live.
    await deployment.live()
    first, second = await deployment.index("ra"), await deployment.index("rb")
    env = ActivityEnvironment()
    swapped = await env.run(deployment.activities.swap_alias, SwapInput(first))
    assert swapped.old_indices == sorted([deployment.indices.index_name("v1"), second])
    with pytest.raises(ApplicationError) as refused:
        await env.run(deployment.activities.swap_alias, SwapInput(second))
    assert (refused.value.type, refused.value.non_retryable) == ("Conflict", True)
    assert await deployment.aliases() == ([first], [first])
    # The first one's swap retried after it went through (its answer lost) changes nothing.
    assert (await env.run(deployment.activities.swap_alias, SwapInput(first))).old_indices == []


async def test_a_swap_changes_nothing_when_the_aliases_moved_after_it_read_them(
    deployment: Deployment,
) -> None:
    # Another swap lands between this one's reading of the aliases and its _aliases
    # call: the call must fail whole (a retry reads again), not overwrite it.
    live = await deployment.live()
    first, second = await deployment.index("ra"), await deployment.index("rb")
    other = Indices(deployment.indices.es, deployment.indices.prefix)
    read_aliases = deployment.indices.behind

    async def behind_then_the_other_swap(alias: str) -> list[str]:
        found = await read_aliases(alias)
        if alias == deployment.indices.write_alias:
            deployment.indices.behind = read_aliases  # type: ignore[method-assign]
            assert await other.swap(first) == sorted([live, second])
        return found

    deployment.indices.behind = behind_then_the_other_swap  # type: ignore[method-assign]
    with pytest.raises(NotFoundError):
        await deployment.indices.swap(second)
    assert await deployment.aliases() == ([first], [first])
    # Its retry reads the aliases again: its index no longer receives updates.
    with pytest.raises(StaleIndex):
        await deployment.indices.swap(second)


async def test_product_indices_keep_a_replica_where_a_second_node_can_hold_it(
    running: tuple[Gateway, CatalogApi], settings: Settings
) -> None:
    # auto_expand_replicas 0-1: one replica on production's three nodes, none on this
    # single node (where the index stays green). A new index is made so; one made
    # before, with number_of_replicas 0, is given it in place when search starts.
    es = AsyncElasticsearch(settings.elasticsearch_url)
    indices = Indices(es, settings.search_index_prefix)
    made, live = f"replicas-test-{uuid.uuid4().hex[:8]}", indices.write_alias
    replicas = {"index.auto_expand_replicas": "0-1"}
    try:
        await indices.create(made)
        await es.indices.put_settings(
            index=live,
            settings={"index.auto_expand_replicas": "false", "index.number_of_replicas": 0},
        )
        await indices.ensure()  # what the search service does at start
        for name in (made, live):
            found = await es.indices.get_settings(index=name)
            assert {i["settings"]["index"].get("auto_expand_replicas") for i in found.values()} == {
                "0-1"
            }, name
        health = await es.cluster.health(
            index=f"{made},{live}", wait_for_status="green", timeout="30s"
        )
        assert health["status"] == "green"
    finally:
        await es.indices.put_settings(index=live, settings=replicas)
        await es.options(ignore_status=404).indices.delete(index=made)
        await es.close()
