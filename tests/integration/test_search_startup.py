"""Search's start-up replica setting on blocked indices.

At start search gives older indices their replica setting. An index block on
metadata refuses that (403 cluster_block_exception) while searches still work, so
search writes the setting only where it differs and logs a refusal as a warning
instead of exiting: a crash-looping search pod would stop the searches too.

It also refuses auto-creation of its indices, a cluster-wide rule it shares: it
adds its prefix to the patterns there and never opens what they close.
"""

from __future__ import annotations

import json
import logging
import urllib.request
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from elasticsearch import AsyncElasticsearch

from workers.search.index import REPLICAS, Indices

pytestmark = [pytest.mark.integration]
READ_ONLY = "index.blocks.read_only"
METADATA = "index.blocks.metadata"
FLOOD_STAGE = "index.blocks.read_only_allow_delete"
BLOCKS = (READ_ONLY, METADATA, FLOOD_STAGE)
NO_REPLICAS = {"index.auto_expand_replicas": "false", "index.number_of_replicas": 0}
LOGGER = "workers.search.index"
AUTO_CREATE = "action.auto_create_index"


@pytest_asyncio.fixture
async def auto_create_rule(es: AsyncElasticsearch) -> AsyncIterator[None]:
    """The cluster's auto-create rule, put back as it was (the platform's own) afterwards."""
    before = await es.cluster.get_settings(flat_settings=True)
    yield
    rule = before["persistent"].get(AUTO_CREATE)
    await es.cluster.put_settings(persistent={AUTO_CREATE: rule})
    await es.cluster.put_settings(transient={AUTO_CREATE: before["transient"].get(AUTO_CREATE)})


async def rule_of(es: AsyncElasticsearch) -> str | None:
    found = await es.cluster.get_settings(flat_settings=True)
    rule: str | None = found["persistent"].get(AUTO_CREATE)
    return rule


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
    es: AsyncElasticsearch, auto_create_rule: None
) -> None:
    """A cluster-wide metadata block refuses every cluster settings write, even one that
    changes nothing; start-up must not write the auto-create rule it already holds."""
    indices = Indices(es, f"startup-test-{uuid.uuid4().hex[:8]}")
    await indices.refuse_auto_create()
    await es.cluster.put_settings(persistent={"cluster.blocks.read_only": True})
    try:
        await indices.refuse_auto_create()
        found = await rule_of(es)
    finally:
        await es.cluster.put_settings(persistent={"cluster.blocks.read_only": None})
    assert found is not None and found.startswith(f"-{indices.prefix}-*,")


async def test_start_up_adds_its_prefix_to_the_auto_create_rule_it_finds(
    es: AsyncElasticsearch, auto_create_rule: None
) -> None:
    # Another deployment's refusal stays: replacing the rule would let that one's
    # dropped indices be created again by a late write.
    await es.cluster.put_settings(persistent={AUTO_CREATE: "-other-*,+*"})
    indices = Indices(es, f"startup-test-{uuid.uuid4().hex[:8]}")
    await indices.refuse_auto_create()
    assert await rule_of(es) == f"-{indices.prefix}-*,-other-*,+*"
    await indices.refuse_auto_create()  # already there: unchanged
    assert await rule_of(es) == f"-{indices.prefix}-*,-other-*,+*"


@pytest.mark.parametrize("unset", [None, "true"])
async def test_start_up_on_an_open_cluster_refuses_only_its_prefix(
    es: AsyncElasticsearch, auto_create_rule: None, unset: str | None
) -> None:
    await es.cluster.put_settings(persistent={AUTO_CREATE: unset})
    indices = Indices(es, f"startup-test-{uuid.uuid4().hex[:8]}")
    await indices.refuse_auto_create()
    assert await rule_of(es) == f"-{indices.prefix}-*,+*"


async def test_start_up_leaves_a_cluster_without_auto_creation_as_it_is(
    es: AsyncElasticsearch, auto_create_rule: None
) -> None:
    # A hardened cluster: no index is created by a write anywhere. "+*" after our
    # refusal would open every other index.
    await es.cluster.put_settings(persistent={AUTO_CREATE: False})
    indices = Indices(es, f"startup-test-{uuid.uuid4().hex[:8]}")
    await indices.refuse_auto_create()
    assert await rule_of(es) == "false"


async def test_start_up_merges_into_a_transient_rule_where_it_takes_effect(
    es: AsyncElasticsearch, auto_create_rule: None
) -> None:
    # A transient rule overrides the persistent one: a refusal written beside it,
    # in the persistent settings, would never apply.
    await es.cluster.put_settings(transient={AUTO_CREATE: "-other-*,+*"})
    indices = Indices(es, f"startup-test-{uuid.uuid4().hex[:8]}")
    await indices.refuse_auto_create()
    found = await es.cluster.get_settings(flat_settings=True)
    assert found["transient"][AUTO_CREATE] == f"-{indices.prefix}-*,-other-*,+*"


def test_search_is_ready_on_its_elasticsearch_not_on_postgresql(settings, services) -> None:
    """Search's store is Elasticsearch: that is what its readiness checks. PostgreSQL,
    which its work never uses, is not (a failover of it took search out of rotation)."""
    services("search")
    url = f"http://{settings.host}:{settings.side_port('search')}/readyz"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert json.loads(response.read()) == {
            "status": "ready",
            "checks": {"elasticsearch": True},
        }
