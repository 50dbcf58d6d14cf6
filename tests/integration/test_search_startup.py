"""Search's start-up replica setting on blocked indices.

At start search gives older indices their replica setting. An index block on
metadata refuses that (403 cluster_block_exception) while searches still work, so
search writes the setting only where it differs and logs a refusal as a warning
instead of exiting: a crash-looping search pod would stop the searches too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from elasticsearch import AsyncElasticsearch

from agora.config import Settings
from workers.search.index import REPLICAS, Indices

pytestmark = [pytest.mark.integration]
READ_ONLY = "index.blocks.read_only"
METADATA = "index.blocks.metadata"
FLOOD_STAGE = "index.blocks.read_only_allow_delete"
BLOCKS = (READ_ONLY, METADATA, FLOOD_STAGE)
NO_REPLICAS = {"index.auto_expand_replicas": "false", "index.number_of_replicas": 0}
LOGGER = "workers.search.index"


@pytest_asyncio.fixture
async def es(settings: Settings) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(settings.elasticsearch_url)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def made(es: AsyncElasticsearch) -> AsyncIterator[list[str]]:
    """Names of test-only indices; each is unblocked and deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        for block in BLOCKS:  # one at a time: a block's own removal is always allowed
            await es.options(ignore_status=404).indices.put_settings(
                index=name, settings={block: None}
            )
        await es.options(ignore_status=404).indices.delete(index=name)


async def an_index(
    indices: Indices, made: list[str], settings: dict[str, object] | None = None
) -> str:
    """A new product index with a test-only name, then `settings` put on it."""
    name = f"replicate-test-{uuid.uuid4().hex[:8]}"
    made.append(name)
    await indices.create(name)
    if settings:
        await indices.es.indices.put_settings(index=name, settings=settings)
    return name


async def replicas_of(es: AsyncElasticsearch, name: str) -> str | None:
    found = await es.indices.get_settings(index=name, name="index.auto_expand_replicas")
    setting: str | None = found[name]["settings"].get("index", {}).get("auto_expand_replicas")
    return setting


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


@pytest.mark.parametrize("block", [READ_ONLY, METADATA])
async def test_a_refused_replica_setting_is_a_warning_and_search_goes_on(
    es: AsyncElasticsearch, made: list[str], caplog: pytest.LogCaptureFixture, block: str
) -> None:
    indices = Indices(es, "unused")
    blocked = await an_index(indices, made, NO_REPLICAS)
    await es.indices.put_settings(index=blocked, settings={block: True})

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await indices.replicate([blocked])  # refused by Elasticsearch: must not raise

    [warning] = warnings(caplog)
    assert vars(warning)["indices"] == [blocked]
    assert "cluster_block_exception" in vars(warning)["error"]
    await es.indices.put_settings(index=blocked, settings={block: None})
    assert await replicas_of(es, blocked) == "false"


async def test_only_indices_whose_setting_differs_are_written(
    es: AsyncElasticsearch, made: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # The read-only index already has REPLICAS: a write naming it would be refused,
    # and with it the write to the other index.
    indices = Indices(es, "unused")
    current = await an_index(indices, made)
    behind = await an_index(indices, made, NO_REPLICAS)
    await es.indices.put_settings(index=current, settings={READ_ONLY: True})

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await indices.replicate([current, behind])
        await indices.replicate([current])  # nothing differs: nothing to write

    assert warnings(caplog) == []
    assert await replicas_of(es, behind) == REPLICAS
    assert await replicas_of(es, current) == REPLICAS


async def test_the_disk_flood_stage_block_does_not_refuse_the_replica_setting(
    es: AsyncElasticsearch, made: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Since Elasticsearch 8 the flood stage's block stops data writes only
    # (elastic/elasticsearch#81781): the setting is written, nothing is logged.
    indices = Indices(es, "unused")
    flooded = await an_index(indices, made, NO_REPLICAS)
    await es.indices.put_settings(index=flooded, settings={FLOOD_STAGE: True})

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await indices.replicate([flooded])

    assert warnings(caplog) == []
    assert await replicas_of(es, flooded) == REPLICAS


async def test_an_unchanged_auto_create_rule_is_not_written_again_under_a_cluster_block(
    es: AsyncElasticsearch,
) -> None:
    """A cluster-wide metadata block refuses every cluster settings write, even one that
    changes nothing; start-up must not write the auto-create rule it already holds."""
    before = await es.cluster.get_settings(flat_settings=True)
    indices = Indices(es, f"startup-test-{uuid.uuid4().hex[:8]}")
    await indices.refuse_auto_create()
    await es.cluster.put_settings(persistent={"cluster.blocks.read_only": True})
    try:
        await indices.refuse_auto_create()
        found = await es.cluster.get_settings(flat_settings=True)
    finally:
        await es.cluster.put_settings(persistent={"cluster.blocks.read_only": None})
        # The platform's own rule, as its search service wrote it.
        rule = before["persistent"].get("action.auto_create_index")
        await es.cluster.put_settings(persistent={"action.auto_create_index": rule})
    assert found["persistent"]["action.auto_create_index"] == f"-{indices.prefix}-*,+*"
