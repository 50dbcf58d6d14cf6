"""Builds search's parts from the shared runtime: the one place its pieces meet."""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch

from activities.search import SearchActivities
from agora.config import Settings
from agora.service import Runtime, ServiceParts
from contracts.agora.catalog.v1 import CatalogServiceStub
from contracts.agora.inventory.v1 import InventoryServiceStub
from workers.search.api import SearchApi
from workers.search.consumer import SearchIndexer
from workers.search.index import Indices
from workflows.search import ReindexWorkflow

# Each Elasticsearch request's timeout and retries (a timeout is retried too): the
# backfill's heartbeat must outlast a page's writes at these (workflows/search.py).
REQUEST_TIMEOUT_S = 10
MAX_RETRIES = 2


def elasticsearch(settings: Settings) -> AsyncElasticsearch:
    """The client, verifying the cluster's own CA and sending its API key when configured."""
    secured: dict[str, Any] = {}
    if settings.elasticsearch_ca_file:
        secured["ca_certs"] = settings.elasticsearch_ca_file
    if settings.elasticsearch_api_key:
        secured["api_key"] = settings.elasticsearch_api_key
    return AsyncElasticsearch(
        settings.elasticsearch_url,
        request_timeout=REQUEST_TIMEOUT_S,
        retry_on_timeout=True,
        max_retries=MAX_RETRIES,
        **secured,
    )


async def build_parts(rt: Runtime) -> ServiceParts:
    settings = rt.settings
    es = elasticsearch(settings)
    indices = Indices(es, settings.search_index_prefix, settings.search_refresh_interval)
    try:
        await indices.ensure()
    except BaseException:
        await es.close()  # the start retries the build with a client of its own
        raise
    activities = SearchActivities(
        es,
        indices,
        CatalogServiceStub(rt.channels.get("catalog")),
        InventoryServiceStub(rt.channels.get("inventory")),
    )
    return ServiceParts(
        grpc_handlers=[SearchApi(es, indices)],
        activities=[
            activities.begin_reindex,
            activities.backfill,
            activities.swap_alias,
            activities.drop_indices,
            activities.abandon_reindex,
        ],
        workflows=[ReindexWorkflow],
        consumers=[SearchIndexer(es, indices).spec()],
        readiness={"elasticsearch": lambda: searchable(es, indices)},
    )


async def searchable(es: AsyncElasticsearch, indices: Indices) -> bool:
    """Readiness: the index searches read has its primary shards (health not red).
    Not `ping()`: a HEAD / that Elasticsearch refuses (405 here) marks its node dead
    in the client's pool, and every search then waits out the node's timeout."""
    health = await es.cluster.health(index=indices.read_alias)
    return bool(health["status"] != "red")
