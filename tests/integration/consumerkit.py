"""Helpers for the event path: a service's batch handler called in-process, as
agora.kafka would, what a service's outbox holds for an aggregate, and what a topic
holds (read by a consumer group of its own).

Not a test module (its name does not start with test_). The records are what the
consumer hands a batch handler: decoded envelopes with the Kafka record they came in.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from agora import outbox
from agora.config import Settings
from agora.kafka import Decoded
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.identity.v1 import AccountRegistered


def decoded(topic: str, *envelopes: EventEnvelope, first_offset: int = 0) -> list[Decoded]:
    """One partition's batch: the envelopes at consecutive offsets of `topic`."""
    batch: list[Decoded] = []
    for offset, envelope in enumerate(envelopes, start=first_offset):
        value = bytes(envelope)
        record = ConsumerRecord(
            topic=topic,
            partition=0,
            offset=offset,
            timestamp=0,
            timestamp_type=0,
            key=envelope.aggregate_id.encode(),
            value=value,
            checksum=None,
            serialized_key_size=len(envelope.aggregate_id),
            serialized_value_size=len(value),
            headers=(),
        )
        batch.append((envelope, record))
    return batch


async def outbox_events(pool: asyncpg.Pool, aggregate_type: str, aggregate_id: str) -> list[str]:
    """The event types a service's outbox holds for one aggregate, in its order, without
    the producer's prefix ("payments.PaymentCaptured" -> "PaymentCaptured")."""
    rows = await pool.fetch(
        "SELECT event_type FROM outbox WHERE aggregate_type = $1 AND aggregate_id = $2"
        " ORDER BY sequence",
        aggregate_type,
        aggregate_id,
    )
    return [r["event_type"].split(".", 1)[-1] for r in rows]


async def read_all(settings: Settings, topic: str, expected: int) -> list[ConsumerRecord]:
    """The topic's records from the start, once `expected` of them are there (or after
    about 15 s with what came), and then on to the topic's end as it stands: a record
    beyond `expected` (a second publication) is read too, for the caller to see."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"reader-{uuid.uuid4()}",
    )
    await consumer.start()
    records: list = []
    try:
        for _ in range(30):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
            if len(records) >= expected:
                break
        partitions = list(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        for _ in range(30):
            positions = {p: await consumer.position(p) for p in partitions}
            if all(positions[p] >= ends[p] for p in partitions):
                break
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        else:
            raise AssertionError(f"{topic}: its end was not reached in 15 s")
    finally:
        await consumer.stop()
    return records


async def append_event(pool: asyncpg.Pool, topic: str) -> EventEnvelope:
    """One event written to the outbox of `pool`'s database (an account registered),
    for `topic`, as a service's transaction writes it."""
    async with pool.acquire() as conn, conn.transaction():
        return await outbox.append(
            conn,
            producer="identity",
            topic=topic,
            aggregate_type="account",
            aggregate_id="acct-1",
            payload=AccountRegistered(account_id="acct-1", email="a@x"),
        )


@asynccontextmanager
async def private_outbox(settings: Settings, name: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on an outbox of its own: a fresh schema `<name>_<random>` of identity's
    database holding the outbox tables, dropped afterwards."""
    schema = f"{name}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(settings.db_dsn("identity"))
    await admin.execute(f"CREATE SCHEMA {schema}")
    await admin.close()
    pool = await asyncpg.create_pool(
        settings.db_dsn("identity"), server_settings={"search_path": schema}
    )
    for statement in outbox.OUTBOX_SCHEMA:
        await pool.execute(statement)
    try:
        yield pool
    finally:
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()
