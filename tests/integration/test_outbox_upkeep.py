"""The relay's upkeep: sent rows pruned after their retention, its gauges handed over."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from agora import kafka, outbox
from agora.config import Settings
from agora.outbox import OutboxRelay
from tests.integration.consumerkit import append_event, private_outbox, read_all

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with private_outbox(settings, "outbox_upkeep") as pool:
        yield pool


async def append(pool: asyncpg.Pool, topic: str) -> uuid.UUID:
    return uuid.UUID((await append_event(pool, topic)).event_id)


async def test_rows_sent_longer_ago_than_the_retention_are_pruned_and_no_others(
    pool: asyncpg.Pool,
) -> None:
    old_sent, recent_sent, old_unsent = [await append(pool, "t") for _ in range(3)]
    await pool.execute(
        "UPDATE outbox SET created_at = now() - interval '8 days',"
        " sent_at = now() - interval '8 days' WHERE event_id = $1",
        old_sent,
    )
    await pool.execute(
        "UPDATE outbox SET sent_at = now() - interval '1 day' WHERE event_id = $1", recent_sent
    )
    await pool.execute(
        "UPDATE outbox SET created_at = now() - interval '8 days' WHERE event_id = $1", old_unsent
    )
    relay = OutboxRelay(pool, new_producer=None, service="upkeep")  # type: ignore[arg-type]

    assert await relay.prune_sent() == 1
    left = {row["event_id"] for row in await pool.fetch("SELECT event_id FROM outbox")}
    assert left == {recent_sent, old_unsent}, "an unsent row is never pruned, however old"


async def test_the_prune_reads_only_the_rows_it_deletes(pool: asyncpg.Pool) -> None:
    # With no index on sent_at, every prune's last chunk read the whole table (a
    # week of sent rows), past the 30 s command timeout on a large one: the relay's
    # session ended before it published, at every start, for good.
    await pool.execute(
        "INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, sequence,"
        " event_type, envelope, created_at, sent_at)"
        " SELECT gen_random_uuid(), 't', 'a', 'x', n, 'e', '', now() - age, now() - age"
        " FROM generate_series(1, 2003) AS n,"
        " LATERAL (SELECT CASE WHEN n <= 3 THEN interval '8 days' ELSE interval '1 hour' END"
        " AS age) AS ages"
    )
    await pool.execute("ANALYZE outbox")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")  # the plan of a large table
        [plan] = json.loads(
            await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {outbox.PRUNE_SQL}",
                outbox.SENT_RETENTION,
                outbox.PRUNE_CHUNK,
            )
        )
        await conn.execute("ROLLBACK AND CHAIN")  # nothing deleted here
    dropped = _rows_dropped(plan["Plan"])
    assert dropped == 0, f"the prune read {dropped} rows it did not delete to find 3"


def _rows_dropped(node: dict[str, Any]) -> int:
    """Rows the plan's scans read and dropped (not matching its condition)."""
    here = node.get("Rows Removed by Filter", 0) * node.get("Actual Loops", 1)
    return here + sum(_rows_dropped(child) for child in node.get("Plans", []))


async def test_a_relay_that_ends_its_session_stops_reporting_a_backlog(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    topic = f"outbox-upkeep-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    service = f"upkeep-{uuid.uuid4().hex[:8]}"
    relay = OutboxRelay(
        pool,
        lambda: kafka.create_producer(settings, client_id="outbox-upkeep"),
        service,
        poll_interval=0.1,
    )
    running = asyncio.create_task(relay.run())
    try:
        await append(pool, topic)
        for _ in range(600):  # until it published the row and reported its backlog
            if service in outbox._backlog and not await relay.backlog():
                break
            await asyncio.sleep(0.05)
        assert service in outbox._backlog, "the relay reports while it holds the lock"
    finally:
        relay.stop()
        await running
    # The lock (and the reporting) passes to another process's relay: a value left
    # behind here would keep the OutboxStale page up after the backlog is gone.
    assert service not in outbox._backlog


def observed_age(service: str) -> float | None:
    for observation in outbox._observe_age(None):  # type: ignore[arg-type]
        if observation.attributes == {"service": service}:
            return float(observation.value)
    return None


@asynccontextmanager
async def failing_relay(
    settings: Settings, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture, *, age_s: int = 0
) -> AsyncIterator[tuple[OutboxRelay, str]]:
    """A relay whose sends Kafka refuses (a row for a topic the broker does not have,
    which it will not create): each session fails and the next tries again. Yields it
    and its service once a session has failed; the row is `age_s` old."""
    service = f"failing-{uuid.uuid4().hex[:8]}"
    relay = OutboxRelay(
        pool,
        lambda: AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=300
        ),
        service,
        poll_interval=0.1,
    )
    event_id = await append(pool, f"no-such-topic-{uuid.uuid4().hex[:8]}")
    await pool.execute(
        "UPDATE outbox SET created_at = now() - $1 * interval '1 second' WHERE event_id = $2",
        age_s,
        event_id,
    )
    running = asyncio.create_task(relay.run())
    try:

        def failed() -> bool:  # this relay's session failed and it tries again
            return any(
                r.name == "agora.outbox"
                and "retrying" in r.getMessage()
                and getattr(r, "service", "") == service
                for r in caplog.records
            )

        for _ in range(600):
            if failed():
                break
            await asyncio.sleep(0.05)
        assert failed(), "a send failed"
        yield relay, service
    finally:
        relay.stop()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_relay_that_cannot_publish_keeps_reporting_a_backlog_that_ages(
    settings: Settings, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # The backlog's age must stay exported and keep growing, or OutboxStale could
    # never fire in the outage it is there for.
    async with failing_relay(settings, pool, caplog, age_s=600) as (_, service):
        first = observed_age(service)
        assert first is not None and first >= 600, "still reported after the failure"
        await asyncio.sleep(1.0)
        later = observed_age(service)
        assert later is not None and later > first, "and ageing"


async def test_a_relay_taking_the_lock_while_kafka_is_unreachable_reports_the_backlog(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # It takes over from a relay whose Kafka went away, and its own producer never
    # starts, so it never publishes. It reports from the moment it holds the lock, or
    # no process would, and OutboxStale would stay silent through the outage.
    service = f"unreachable-{uuid.uuid4().hex[:8]}"
    relay = OutboxRelay(
        pool,
        lambda: AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", request_timeout_ms=300),
        service,
        poll_interval=0.1,
    )
    event_id = await append(pool, "t")
    await pool.execute(
        "UPDATE outbox SET created_at = now() - interval '600 seconds' WHERE event_id = $1",
        event_id,
    )
    running = asyncio.create_task(relay.run())
    try:
        for _ in range(600):
            if any(
                "retrying" in r.getMessage() and getattr(r, "service", "") == service
                for r in caplog.records
            ):
                break
            await asyncio.sleep(0.05)
        age = observed_age(service)
        assert age is not None and age >= 600, "reported though it never published"
        assert outbox._backlog[service][0] >= 1
    finally:
        relay.stop()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_failed_relay_stops_reporting_once_another_holds_the_lock(
    settings: Settings, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # Meanwhile another process's relay takes the lock and publishes (here the test
    # holds the lock, as that relay would). The age this one kept would otherwise
    # page while the other publishes.
    async with failing_relay(settings, pool, caplog) as (relay, service):
        assert service in outbox._backlog, "kept after its own failure"
        other = await pool.acquire()
        try:
            # The failed session let the lock go; the other relay's wins it now.
            await other.execute("SELECT pg_advisory_lock($1)", relay._lock_key)
            for _ in range(600):
                if service not in outbox._backlog:
                    break
                await asyncio.sleep(0.05)
            assert service not in outbox._backlog
        finally:
            await other.execute("SELECT pg_advisory_unlock_all()")
            await pool.release(other)


class _Watched:
    """A pool (and its connections) that records, for each statement, whether
    OpenTelemetry's instrumentations were on where it ran, and counts the bytes of the
    bytea values its `fetch`es returned (`read_bytes`)."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool
        self.traced: list[bool] = []
        self.read_bytes = 0

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[object]:
        async with self._pool.acquire() as conn:
            yield _WatchedConnection(conn, self)


class _WatchedConnection:
    def __init__(self, conn: asyncpg.Connection, pool: _Watched):
        self._conn = conn
        self._pool = pool

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self._conn, name)
        if name in ("fetch", "fetchval", "fetchrow", "execute"):

            async def watched(*args: object, **kwargs: object) -> object:
                self._pool.traced.append(is_instrumentation_enabled())
                answer = await attribute(*args, **kwargs)
                if name == "fetch":
                    values = [value for row in answer for value in row.values()]
                    self._pool.read_bytes += sum(len(v) for v in values if isinstance(v, bytes))
                return answer

            return watched
        return attribute


async def test_the_relays_polls_lock_and_marks_run_untraced(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    topic = f"outbox-upkeep-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    watched = _Watched(pool)
    relay = OutboxRelay(
        watched,  # type: ignore[arg-type]
        lambda: kafka.create_producer(settings, client_id="outbox-upkeep"),
        f"upkeep-{uuid.uuid4().hex[:8]}",
        poll_interval=0.05,
    )

    async def unsent() -> int:  # on the pool itself: this test's statements are traced
        return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))

    running = asyncio.create_task(relay.run())
    try:
        await append(pool, topic)
        for _ in range(600):  # until it published the row, then polled an empty outbox
            if not await unsent() and len(watched.traced) > 6:
                break
            await asyncio.sleep(0.05)
    finally:
        relay.stop()
        await running
    assert not await unsent(), "the relay did not publish the row"
    # Traced, each poll (one a second when idle) was a trace of its own.
    assert watched.traced and not any(watched.traced), watched.traced


async def test_a_backlog_past_a_rounds_bytes_goes_in_rounds_in_order_each_once(
    settings: Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One aggregate (one partition), more bytes than a round: the relay sends them in
    # rounds that each fit one producer batch, in the order they were written.
    monkeypatch.setattr(outbox, "ROUND_BYTES", 4096)
    topic = f"outbox-rounds-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    written = [await append(pool, topic) for _ in range(40)]
    relay = OutboxRelay(pool, new_producer=None, service="rounds")  # type: ignore[arg-type]
    producer = kafka.create_producer(
        settings, client_id="outbox-rounds", max_batch_size=outbox.ROUND_BYTES
    )
    await producer.start()
    try:
        rounds = [await relay.publish_batch(producer)]
        assert 1 < rounds[0] < len(written), "the first round stops at its bytes"
        while published := await relay.publish_batch(producer):
            rounds.append(published)
    finally:
        await producer.stop()
    assert sum(rounds) == len(written) and len(rounds) > 2
    assert not await relay.backlog()
    records = await read_all(settings, topic, len(written))
    sent = [uuid.UUID(dict(r.headers)["event_id"].decode()) for r in records]
    assert sent == written


async def test_a_round_reads_only_its_own_rows_envelopes(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    # A large import's backlog: each round read the 500 oldest rows' envelopes (100 MB
    # of 200 KB events) to publish the few that fit its bytes.
    topic = f"outbox-large-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    await pool.execute(
        "INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, sequence,"
        " event_type, envelope) SELECT gen_random_uuid(), $1, 'product', 'SKU-1', n,"
        " 'catalog.ProductUpdated', decode(repeat('ab', 200000), 'hex')"
        " FROM generate_series(1, 40) AS n",
        topic,
    )
    counted = _Watched(pool)
    relay = OutboxRelay(counted, new_producer=None, service="large")  # type: ignore[arg-type]
    producer = kafka.create_producer(
        settings, client_id="outbox-large", max_batch_size=outbox.ROUND_BYTES
    )
    await producer.start()
    try:
        published = await relay.publish_batch(producer)
    finally:
        await producer.stop()
    assert published == 2, "two 200 KB events fit a round of 512 KiB"
    assert counted.read_bytes == published * 200_000, "only the round's envelopes were read"
    assert await relay.backlog() == 40 - published
    records = await read_all(settings, topic, published)
    assert [len(r.value) for r in records] == [200_000] * published
