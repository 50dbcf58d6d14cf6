"""The relay through PostgreSQL failures: a vanished lock holder's backend does not
outlive it by hours, and a storm of reconnections does not end the relay."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from agora import db, kafka
from agora.config import Settings
from agora.outbox import OUTBOX_SCHEMA, OutboxRelay
from tests.integration.auditkit import superuser
from tests.integration.consumerkit import append_event, read_all

pytestmark = pytest.mark.integration


async def test_the_platforms_connections_carry_keepalives_that_end_a_silent_peer_in_a_minute(
    settings: Settings,
) -> None:
    # The relay's lock lives on one of these: a holder whose node died without a FIN
    # must not keep it (and every standby idle) for the kernel's two hours.
    pool = await db.create_pool(settings, "identity", size=2)
    try:
        async with pool.acquire() as conn:
            shown = {name: await conn.fetchval(f"SHOW {name}") for name in db.KEEPALIVES}
    finally:
        await pool.close()
    assert shown == db.KEEPALIVES
    # Silent for 20 s, then 3 probes 10 s apart; unacknowledged data given 50 s.
    idle, interval, count = (
        int(db.KEEPALIVES[f"tcp_keepalives_{n}"]) for n in ("idle", "interval", "count")
    )
    assert idle + interval * count <= 60 and int(db.KEEPALIVES["tcp_user_timeout"]) <= 60_000
    # The migrations' lock connection too.
    lock = db.connect_sync(settings.db_dsn("identity"))
    try:
        with lock.cursor() as cursor:
            cursor.execute("SHOW tcp_keepalives_idle")
            assert cursor.fetchone() == ("20",)
    finally:
        lock.close()
    # And yoyo's, which runs them (each in a transaction holding its locks).
    backend = db.migration_backend(settings.db_dsn("identity"))
    try:
        cursor = backend.connection.cursor()
        cursor.execute("SHOW tcp_keepalives_idle")
        assert cursor.fetchone() == ("20",)
    finally:
        backend.connection.close()


class Database:
    """A database of its own under a login role of its own, whose connection limit
    the test sets (as the superuser)."""

    def __init__(self, settings: Settings) -> None:
        self.name = f"relay_failover_{uuid.uuid4().hex[:8]}"
        password = secrets.token_hex(8)
        self.password = password
        host = settings.postgres_host or settings.host
        self.dsn = (
            f"postgresql://{self.name}:{password}@{host}:{settings.ports['postgres']}/{self.name}"
        )
        self.settings = settings

    async def limit_connections(self, limit: int) -> None:
        admin = await superuser(self.settings)
        try:
            await admin.execute(f"ALTER ROLE {self.name} CONNECTION LIMIT {limit}")
        finally:
            await admin.close()


@pytest_asyncio.fixture
async def private(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings)
    admin = await superuser(settings)
    try:
        await admin.execute(f"CREATE ROLE {database.name} LOGIN PASSWORD '{database.password}'")
        await admin.execute(f"CREATE DATABASE {database.name} OWNER {database.name}")
        conn = await asyncpg.connect(database.dsn)
        try:
            for statement in OUTBOX_SCHEMA:
                await conn.execute(statement)
        finally:
            await conn.close()
        yield database
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {database.name}")
        await admin.close()


async def test_a_relay_refused_for_too_many_connections_keeps_going_and_publishes_after(
    settings: Settings, private: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # After a PostgreSQL restart every pool of the platform reconnects at once, and
    # some are refused with 53300 for a while. The relay must wait it out: ending, it
    # took its whole service down.
    topic = f"outbox-failover-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    writer = await asyncpg.create_pool(private.dsn, min_size=0, max_size=1)
    try:
        envelope = await append_event(writer, topic)
    finally:
        await writer.close()
    await private.limit_connections(0)
    pool = await asyncpg.create_pool(private.dsn, min_size=0, max_size=4)
    service = f"failover-{uuid.uuid4().hex[:8]}"
    relay = OutboxRelay(
        pool,
        lambda: kafka.create_producer(settings, client_id="outbox-failover"),
        service,
        poll_interval=0.1,
    )
    running = asyncio.create_task(relay.run())
    try:

        def refused() -> bool:  # a session of this relay met 53300 and is retried
            return any(
                getattr(r, "service", "") == service
                and "TooManyConnections" in getattr(r, "error", "")
                for r in caplog.records
            )

        for _ in range(600):
            if refused() or running.done():
                break
            await asyncio.sleep(0.05)
        assert not running.done(), f"the relay ended: {running.exception()!r}"
        assert refused(), "the relay met too many connections"

        await private.limit_connections(-1)  # the storm is over
        for _ in range(600):
            if await relay.backlog() == 0:
                break
            await asyncio.sleep(0.1)
        assert await relay.backlog() == 0, "published once connections were accepted"
    finally:
        relay.stop()
        await asyncio.gather(running, return_exceptions=True)
        await pool.close()
    published = [bytes(r.value) for r in await read_all(settings, topic, 1)]
    assert published == [bytes(envelope)]
