"""An event Kafka would never accept: refused when written, and one written before
that cannot stop the relay at the rows ahead of it, nor keep it spinning."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agora import kafka, outbox
from agora.config import Settings
from agora.outbox import EventTooLarge, OutboxRelay
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.identity.v1 import AccountRegistered
from tests.integration.consumerkit import append_event, private_outbox

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with private_outbox(settings, "outbox_poison") as pool:
        yield pool


async def test_an_event_larger_than_kafka_takes_fails_its_transaction(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(EventTooLarge) as refused:
            async with conn.transaction():
                await outbox.append(
                    conn,
                    producer="identity",
                    topic="identity.events",
                    aggregate_type="account",
                    aggregate_id="acct-1",
                    payload=AccountRegistered(account_id="acct-1", email="x" * (1 << 20)),
                )
    assert refused.value.non_retryable, "the same event is as large on every retry"
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def write_oversized_row(pool: asyncpg.Pool, topic: str) -> uuid.UUID:
    """A row larger than the producer sends, as written before `append` refused them."""
    event_id = uuid.uuid4()
    envelope = EventEnvelope(event_id=str(event_id), payload=b"x" * (1100 * 1024))
    await pool.execute(
        "INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, sequence,"
        " event_type, envelope) VALUES ($1, $2, 'account', 'acct-big', 1, 'identity.Big', $3)",
        event_id,
        topic,
        bytes(envelope),
    )
    return event_id


async def records_in(settings: Settings, topic: str) -> int:
    """How many records the topic holds (its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(kafka.PARTITIONS)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


@asynccontextmanager
async def poisoned_relay(
    settings: Settings,
    pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
    *,
    rows_before: int,
    sessions: int,
) -> AsyncIterator[tuple[list[AIOKafkaProducer], Callable[[], list[object]]]]:
    """`rows_before` rows, an oversized one, then one more; a relay publishing them
    with a producer per session (made by a factory that keeps them). Yields the
    producers and the relay's retry delays once `sessions` sessions have failed."""
    topic = f"outbox-poison-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    for _ in range(rows_before):
        await append_event(pool, topic)
    await write_oversized_row(pool, topic)
    await append_event(pool, topic)
    service = f"poison-{uuid.uuid4().hex[:8]}"
    producers: list[AIOKafkaProducer] = []

    def new_producer() -> AIOKafkaProducer:
        producers.append(kafka.create_producer(settings, client_id=service))
        return producers[-1]

    def delays() -> list[object]:
        return [
            getattr(r, "retry_in_s", None)
            for r in caplog.records
            if r.getMessage() == "outbox relay interrupted, retrying"
            and getattr(r, "service", "") == service
        ]

    relay = OutboxRelay(pool, new_producer, service, poll_interval=0.1)
    running = asyncio.create_task(relay.run())
    try:
        for _ in range(600):
            if len(delays()) >= sessions or running.done():
                break
            await asyncio.sleep(0.05)
        assert not running.done(), f"the relay ended: {running.exception()!r}"
        assert len(delays()) >= sessions
        yield producers, delays
    finally:
        relay.stop()
        await asyncio.wait_for(running, 30)


async def test_a_row_kafka_refuses_lets_those_before_it_go_once_and_the_relay_back_off(
    settings: Settings, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    async with poisoned_relay(settings, pool, caplog, rows_before=2, sessions=4) as (_, delays):
        unsent = await pool.fetch("SELECT aggregate_id FROM outbox WHERE sent_at IS NULL")
        assert sorted(r["aggregate_id"] for r in unsent) == ["acct-1", "acct-big"], (
            "the rows before the refused one are marked sent; the one after it waits"
        )
        # The first session published (and started the count over); the others did
        # nothing but fail, so they back off instead of spinning five times a second.
        assert delays()[:4] == [0.2, 0.4, 0.8, 1.6]
        topic = await pool.fetchval("SELECT topic FROM outbox LIMIT 1")
        assert await records_in(settings, topic) == 2, "each published once, not per session"


async def test_every_relay_session_publishes_with_a_producer_of_its_own(
    settings: Settings, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # An idempotent producer left with a sequence gap refuses every send for good:
    # only a new one recovers, so a new session must not inherit the last one's.
    async with poisoned_relay(settings, pool, caplog, rows_before=0, sessions=2) as (producers, _):
        assert len(producers) >= 2
        assert len({id(p) for p in producers}) == len(producers)
        assert all(p._closed for p in producers[:-1]), "a session stops the producer it made"
    assert producers[-1]._closed
