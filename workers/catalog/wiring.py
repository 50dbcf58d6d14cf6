"""Builds catalog's parts from the shared runtime: the one place its pieces meet."""

from __future__ import annotations

import redis.asyncio as aioredis

from activities.catalog import CatalogActivities
from agora.service import Runtime, ServiceParts
from workers.catalog.api import CatalogApi
from workers.catalog.cache import ProductCache
from workers.catalog.reads import CatalogReads
from workflows.catalog import (
    ChangePriceWorkflow,
    CreateProductWorkflow,
    DeactivateProductWorkflow,
    ImportProductsWorkflow,
    UpdateProductWorkflow,
)


async def build_parts(rt: Runtime) -> ServiceParts:
    settings = rt.settings
    # Its own client with short socket timeouts: a hung Redis must cost a read
    # milliseconds (then the breaker skips it), never the request's whole deadline.
    redis = aioredis.from_url(
        settings.redis_url,
        password=settings.redis_password or None,
        socket_timeout=0.25,
        socket_connect_timeout=0.25,
    )
    cache = ProductCache(redis, rt.redis_prefix, ttl_s=settings.catalog_cache_ttl_s)
    activities = CatalogActivities(rt.pool, cache)
    return ServiceParts(
        grpc_handlers=[CatalogApi(CatalogReads(rt.pool, cache))],
        activities=[
            activities.create_product,
            activities.update_product,
            activities.change_price,
            activities.deactivate_product,
            activities.refresh_cache,
            activities.upsert_batch,
        ],
        workflows=[
            CreateProductWorkflow,
            UpdateProductWorkflow,
            ChangePriceWorkflow,
            DeactivateProductWorkflow,
            ImportProductsWorkflow,
        ],
    )
