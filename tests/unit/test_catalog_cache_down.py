"""With Redis away, a hot product is still loaded once per process, not once per read."""

from __future__ import annotations

import asyncio
import socket

import redis.asyncio as aioredis

from contracts.agora.catalog.v1 import Product
from workers.catalog.cache import ProductCache


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again on return: nothing listens


async def test_concurrent_reads_of_one_product_load_it_once_while_redis_is_down() -> None:
    # A real client of a port nobody listens on: every Redis call is refused.
    redis = aioredis.Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=1)
    cache = ProductCache(redis, breaker_s=60)
    loads: list[str] = []

    async def loader(sku: str) -> Product | None:
        loads.append(sku)
        await asyncio.sleep(0.2)  # a query's time, while the other reads arrive
        return Product(sku=sku, title="Lamp", version=3)

    try:
        # A first read finds Redis refusing and trips the breaker; it reads the database.
        assert (await cache.get("WARM", loader)) is not None
        assert not cache.available and loads == ["WARM"]
        # Then 200 reads of one product at once, the breaker open: one load between them.
        read = await asyncio.gather(*(cache.get("HOT", loader) for _ in range(200)))
        assert loads == ["WARM", "HOT"], f"{loads.count('HOT')} loads for one product"
        assert all(p is not None and p.version == 3 for p in read)
        await cache.get("HOT", loader)  # the load has landed: the next read loads again
        assert loads == ["WARM", "HOT", "HOT"]
    finally:
        await redis.aclose()
