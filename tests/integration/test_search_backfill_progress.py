"""A reindex's backfill says how far it is, page by page, with what it copied and merged."""

from __future__ import annotations

import logging
import uuid

import pytest
from elasticsearch import AsyncElasticsearch
from temporalio.testing import ActivityEnvironment

from activities import search
from activities.search import BackfillInput, SearchActivities
from agora.config import Settings
from agora.grpc import Channels
from contracts.agora.catalog.v1 import CatalogServiceStub
from contracts.agora.inventory.v1 import InventoryServiceStub
from tests.integration.conftest import Services
from workers.search.index import Indices

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def running(services: Services) -> None:
    for service in ("catalog", "inventory"):
        services(service)


async def test_a_backfill_logs_its_progress_every_few_pages_and_when_its_pages_are_done(
    running: None,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(search, "PROGRESS_PAGES", 2)
    es = AsyncElasticsearch(settings.elasticsearch_url)
    channels = Channels(settings, caller="search")
    target = f"backfill-test-{uuid.uuid4().hex[:8]}"
    try:
        indices = Indices(es, settings.search_index_prefix)
        await indices.create(target)
        activities = SearchActivities(
            es,
            indices,
            CatalogServiceStub(channels.get("catalog")),
            InventoryServiceStub(channels.get("inventory")),
        )
        with caplog.at_level(logging.INFO, logger="activities.search"):
            result = await ActivityEnvironment().run(activities.backfill, BackfillInput(target, ""))
    finally:
        await es.options(ignore_status=404).indices.delete(index=target)
        channels.close()
        await es.close()
    lines = [r.__dict__ for r in caplog.records if r.getMessage() == "backfill progress"]
    assert lines, "no progress line"
    pages = lines[-1]["pages"]
    assert [line["pages"] for line in lines] == sorted({*range(2, pages + 1, 2), pages})
    assert [line["pages_done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    written = [line["copied"] + line["merged"] for line in lines]
    assert written == sorted(written)
    assert (lines[-1]["copied"], lines[-1]["merged"]) == (result.copied, result.merged)
    assert all(line["new_index"] == target for line in lines)
