"""Builds search's parts from the shared runtime: the one place its pieces meet."""

from __future__ import annotations

from elasticsearch import AsyncElasticsearch

from activities.search import SearchActivities
from agora.service import Runtime, ServiceParts
from contracts.agora.catalog.v1 import CatalogServiceStub
from workers.search.api import SearchApi
from workers.search.consumer import GROUP, TOPICS, SearchIndexer
from workers.search.index import Indices
from workers.search.lag import ConsumerLag
from workflows.search import ReindexWorkflow


def elasticsearch(url: str) -> AsyncElasticsearch:
    return AsyncElasticsearch(url, request_timeout=10, retry_on_timeout=True, max_retries=2)


async def build_parts(rt: Runtime) -> ServiceParts:
    settings = rt.settings
    es = elasticsearch(settings.elasticsearch_url)
    indices = Indices(es, settings.search_index_prefix, settings.search_refresh_interval)
    await indices.ensure()
    activities = SearchActivities(es, indices, CatalogServiceStub(rt.channels.get("catalog")))
    lag = ConsumerLag(settings.kafka_bootstrap, GROUP, TOPICS)
    return ServiceParts(
        grpc_handlers=[SearchApi(es, indices)],
        activities=[
            activities.begin_reindex,
            activities.backfill,
            activities.swap_alias,
            activities.drop_indices,
        ],
        workflows=[ReindexWorkflow],
        consumers=[SearchIndexer(es, indices).spec()],
        background=[lag.run],
    )
