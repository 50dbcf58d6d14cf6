"""Helpers for the audit service's integration tests: events, stores and waiting.

Not a test module (its name does not start with test_); shared by test_audit*.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TypeVar

import asyncpg
import betterproto2
from aiokafka import AIOKafkaProducer

from agora.config import Settings
from contracts import full_name
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.identity.v1 import AccountRegistered
from tests.integration.waiting import eventually

T = TypeVar("T")


def make_envelope(
    *,
    producer: str = "identity",
    aggregate_type: str = "account",
    aggregate_id: str | None = None,
    sequence: int = 1,
    payload: betterproto2.Message | None = None,
    workflow_id: str = "",
    run_id: str = "",
    occurred_at: dt.datetime | None = None,
) -> EventEnvelope:
    """A well-formed envelope as a service's outbox would write it."""
    if payload is None:  # (an empty message is falsy: test for None)
        payload = AccountRegistered(account_id=aggregate_id or "x", email="x@example.com")
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        event_type=f"{producer}.{type(payload).__name__}",
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id or f"test-{uuid.uuid4().hex[:12]}",
        sequence=sequence,
        occurred_at=occurred_at or dt.datetime.now(dt.UTC),
        producer=producer,
        traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
        workflow_id=workflow_id,
        run_id=run_id,
        payload=bytes(payload),
        payload_type=full_name(payload),
    )


async def publish(settings: Settings, topic: str, *values: bytes, key: bytes = b"k") -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def superuser(settings: Settings) -> asyncpg.Connection:
    """The database superuser over the unix socket of the test stack (bypasses everything)."""
    return await asyncpg.connect(
        host=str(settings.state_dir / "postgres" / "run"),
        port=settings.ports["postgres"],
        user="postgres",
        database="audit",
    )


async def recorded(pool: asyncpg.Pool, *event_ids: str, within: float = 60) -> list[asyncpg.Record]:
    """Wait until every event id is in the log; returns their rows in log order."""
    ids = [uuid.UUID(e) for e in event_ids]

    async def probe() -> list[asyncpg.Record] | None:
        rows = await pool.fetch(
            "SELECT * FROM audit_log WHERE event_id = ANY($1::uuid[]) ORDER BY log_sequence", ids
        )
        return rows if len({r["event_id"] for r in rows}) == len(ids) else None

    return await eventually(probe, within=within, what=f"{len(ids)} events in the audit log")
