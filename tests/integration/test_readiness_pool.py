"""A service's PostgreSQL readiness on a real database: a pool busy to its last
connection is ready (busy is not down), a PostgreSQL that cannot be reached is not."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from agora import db
from agora.config import Settings
from agora.sideport import SidePort

pytestmark = [pytest.mark.integration]


@pytest_asyncio.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(settings.db_dsn("orders"), min_size=2, max_size=2)
    assert created is not None
    yield created
    await created.close()


async def readyz(pool: asyncpg.Pool) -> tuple[int, dict[str, object]]:
    """/readyz of a side port whose one check is the pool's, as a service registers it."""
    side = SidePort("127.0.0.1", 0)
    side.started = True
    side.add_check("postgres", lambda: db.answers(pool))
    async with TestClient(TestServer(side.app())) as client:
        response = await client.get("/readyz")
        return response.status, await response.json()


async def test_a_pool_busy_to_its_last_connection_is_ready(pool: asyncpg.Pool) -> None:
    # Work queued on hot rows holds every connection for longer than the probe waits.
    held = [await pool.acquire() for _ in range(2)]
    sleeping = asyncio.create_task(held[0].execute("SELECT pg_sleep(3)"))
    try:
        status, body = await readyz(pool)
        assert (status, body["checks"]) == (200, {"postgres": True})
    finally:
        sleeping.cancel()
        await asyncio.gather(sleeping, return_exceptions=True)
        for conn in held:
            await pool.release(conn)
    status, _ = await readyz(pool)  # and with a connection free, by its SELECT 1
    assert status == 200


async def test_a_postgres_that_cannot_be_reached_is_not_ready(settings: Settings) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections refused
        dsn = settings.db_dsn("orders").replace(f":{settings.ports['postgres']}/", f":{port}/")
        unreachable = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
        assert unreachable is not None
        try:
            status, body = await readyz(unreachable)
        finally:
            await unreachable.close()
    assert (status, body["checks"]) == (503, {"postgres": False})
