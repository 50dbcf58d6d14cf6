"""Helpers for the audit service's integration tests: events, stores and waiting, and
scratch databases migrated with audit's own migrations.

Not a test module (its name does not start with test_); shared by test_audit*.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg
import betterproto2
from aiokafka import AIOKafkaProducer

from agora.config import Settings
from agora.db import migrations_dir
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


async def superuser(settings: Settings, database: str = "audit") -> asyncpg.Connection:
    """The database superuser over the unix socket of the test stack (bypasses everything)."""
    return await asyncpg.connect(
        host=str(settings.state_dir / "postgres" / "run"),
        port=settings.ports["postgres"],
        user="postgres",
        database=database,
    )


def scratch_dsn(settings: Settings, database: str) -> str:
    """The audit role's DSN for another database of the stack's PostgreSQL."""
    return settings.db_dsn("audit").rsplit("/", 1)[0] + f"/{database}"


def migrate(settings: Settings, database: str, *, through: str = "") -> None:
    """Apply audit's migrations to `database` as the audit role, as the service does;
    `through`: only those up to this one (its id, e.g. "0003_sequence_positive")."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(scratch_dsn(settings, database))
    migrations = read_migrations(str(migrations_dir("audit")))
    if through:
        migrations = migrations.filter(lambda m: m.id <= through)
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations))


@asynccontextmanager
async def scratch_database(settings: Settings, *, through: str = "") -> AsyncIterator[str]:
    """A database of its own, owned and migrated like audit's (dropped afterwards): for
    tests that detach partitions or start from an older schema, which the stack's own
    append-only log could never be given back."""
    name = f"audit_scratch_{uuid.uuid4().hex[:10]}"
    admin = await superuser(settings, "postgres")
    try:
        await admin.execute(f"CREATE DATABASE {name} OWNER audit")
        await admin.execute(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")
        await admin.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {name} TO audit")
        inside = await superuser(settings, name)
        try:  # what the stack grants on audit's own database (stack/postgres.py)
            await inside.execute("GRANT USAGE, CREATE ON SCHEMA public TO audit, audit_owner")
        finally:
            await inside.close()
        await asyncio.to_thread(migrate, settings, name, through=through)
        yield name
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def recorded(pool: asyncpg.Pool, *event_ids: str, within: float = 60) -> list[asyncpg.Record]:
    """Wait until every event id is in the log; returns their rows in log order."""
    ids = [uuid.UUID(e) for e in event_ids]

    async def probe() -> list[asyncpg.Record] | None:
        rows = await pool.fetch(
            "SELECT * FROM audit_log WHERE event_id = ANY($1::uuid[]) ORDER BY log_sequence", ids
        )
        return rows if len({r["event_id"] for r in rows}) == len(ids) else None

    return await eventually(probe, within=within, what=f"{len(ids)} events in the audit log")


async def insert_copy(conn: asyncpg.Connection, row: asyncpg.Record, **changes: object) -> None:
    """Insert row `row` again, with `changes` (as whoever `conn` is: no trigger refuses an
    INSERT, but the one that enters each row in audit_entries refuses a second row for
    a sequence or an event id; a superuser gets past it with triggers off)."""
    values = {**dict(row), **changes}
    columns = ", ".join(values)  # the log's own column names
    params = ", ".join(f"${n}" for n in range(1, len(values) + 1))
    await conn.execute(f"INSERT INTO audit_log ({columns}) VALUES ({params})", *values.values())
