"""The audit log over its life, each on a scratch database of its own: a log written
before migration 0004 migrated (forged rows and ids included), the signing key
rotated after the log's first month was detached, and a month's partition made while
a long reader holds the log (by the scheduled activity and at start-up)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.audit import (
    CHAIN_BROKEN,
    AuditActivities,
    SignCheckpointInput,
    ensure_partitions,
    ensure_partitions_in,
)
from agora.config import Settings
from contracts.agora.events.v1 import EventEnvelope
from tests.integration.auditkit import (
    insert_copy,
    make_envelope,
    migrate,
    scratch_database,
    scratch_dsn,
    superuser,
)
from tests.integration.conftest import Services
from tests.integration.consumerkit import decoded
from workers.audit import checkpoints
from workers.audit.chain import LOG_COLUMNS, ChainWriter, link_hash
from workers.audit.consumer import AuditConsumer
from workers.audit.envelopes import check
from workers.audit.signing import CheckpointSigner, TrustedKeys
from workers.audit.verification import verify_chain
from workers.audit.wiring import partitions_at_start

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def roles(services: Services) -> None:
    services("audit")  # the stack's audit and audit_owner roles exist once it has started


@asynccontextmanager
async def audit_pool(settings: Settings, database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(scratch_dsn(settings, database), min_size=1, max_size=2)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


async def append_rows(
    pool: asyncpg.Pool,
    envelopes: list[EventEnvelope],
    *,
    recorded_at: dt.datetime | None = None,
    event_ids: bool = False,
) -> None:
    """Chain `envelopes` onto the head by hand, as the service's role: recorded at
    `recorded_at` (default: now), and with `event_ids` their ids written to
    audit_event_ids as the service did before migration 0004."""
    async with pool.acquire() as conn, conn.transaction():
        head = await conn.fetchrow("SELECT log_sequence, hash FROM audit_chain_head FOR UPDATE")
        sequence, prev = int(head["log_sequence"]), bytes(head["hash"])
        at = recorded_at or await conn.fetchval("SELECT clock_timestamp()")
        rows: list[tuple[object, ...]] = []
        for envelope in envelopes:
            canonical = bytes(envelope)
            checked = check(envelope, canonical)
            sequence += 1
            digest = link_hash(prev, canonical)
            rows.append(
                (
                    sequence,
                    at,
                    checked.event_id,
                    envelope.event_type,
                    envelope.payload_type,
                    envelope.aggregate_type,
                    envelope.aggregate_id,
                    envelope.sequence,
                    envelope.producer,
                    envelope.occurred_at,
                    checked.trace_id,
                    envelope.workflow_id,
                    envelope.run_id,
                    "identity.events",
                    canonical,
                    prev,
                    digest,
                )
            )
            prev = digest
        if event_ids:
            await conn.copy_records_to_table(
                "audit_event_ids",
                records=[(row[2], row[0]) for row in rows],
                columns=["event_id", "log_sequence"],
            )
        await conn.copy_records_to_table("audit_log", records=rows, columns=LOG_COLUMNS)
        await conn.execute(
            "UPDATE audit_chain_head SET log_sequence = $1, hash = $2 WHERE singleton",
            sequence,
            prev,
        )


async def test_a_log_written_before_0004_is_migrated_and_what_was_forged_in_it_is_named(
    settings: Settings, roles: None
) -> None:
    async with (
        scratch_database(settings, through="0003_sequence_positive") as name,
        audit_pool(settings, name) as pool,
    ):
        envelopes = [make_envelope() for _ in range(3)]
        await append_rows(pool, envelopes, event_ids=True)
        signer = CheckpointSigner(os.urandom(32))
        await checkpoints.sign_head(pool, signer, "before-0004")  # at 3
        # What the service's role could do before 0004: plant a made-up event at
        # sequence 2, below the checkpoint, and the id of an event still to come.
        second = await pool.fetchrow("SELECT * FROM audit_log WHERE log_sequence = 2")
        hidden = make_envelope()
        async with pool.acquire() as conn:
            await insert_copy(
                conn,
                second,
                recorded_at=second["recorded_at"] + dt.timedelta(microseconds=1),
                event_id=uuid.uuid4(),
            )
            await conn.execute(
                "INSERT INTO audit_event_ids (event_id, log_sequence) VALUES ($1, 4)",
                uuid.UUID(hidden.event_id),
            )

        await asyncio.to_thread(migrate, settings, name)

        # Entered from the rows the log holds: each sequence once, its first row's id.
        entries = await pool.fetch("SELECT * FROM audit_entries ORDER BY log_sequence")
        assert [(r["log_sequence"], str(r["event_id"])) for r in entries] == [
            (n, e.event_id) for n, e in enumerate(envelopes, start=1)
        ]
        verified = await verify_chain(pool, signer.public_key)
        assert (verified.ok, verified.first_bad_sequence) == (False, 2), verified.failure
        assert "sequence 2 appears twice in the log" in verified.failure
        # The planted id hides nothing: the event it names is recorded when it comes.
        await AuditConsumer(ChainWriter(pool)).handle_batch(decoded("identity.events", hidden))
        assert (
            await pool.fetchval(
                "SELECT log_sequence FROM audit_log WHERE event_id = $1", uuid.UUID(hidden.event_id)
            )
            == 4
        )
        # And the service's role plants nothing any more.
        first = await pool.fetchrow("SELECT * FROM audit_log WHERE log_sequence = 1")
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.UniqueViolationError):
                await insert_copy(
                    conn,
                    first,
                    recorded_at=first["recorded_at"] + dt.timedelta(microseconds=1),
                    event_id=uuid.uuid4(),
                )


async def test_a_rotated_key_goes_on_from_the_retired_keys_checkpoint_once_genesis_is_detached(
    settings: Settings, roles: None
) -> None:
    async with scratch_database(settings) as name, audit_pool(settings, name) as pool:
        admin = await superuser(settings, name)
        try:
            await admin.execute("SET ROLE audit_owner")
            await admin.execute(
                "CREATE TABLE audit_log_2020_01 PARTITION OF audit_log"
                " FOR VALUES FROM ('2020-01-01 00:00Z') TO ('2020-02-01 00:00Z')"
            )
            # The log's first month, then this month's events after it.
            january = dt.datetime(2020, 1, 15, tzinfo=dt.UTC)
            await append_rows(pool, [make_envelope(), make_envelope()], recorded_at=january)
            consumer = AuditConsumer(ChainWriter(pool))
            this_month = [make_envelope(), make_envelope()]
            await consumer.handle_batch(decoded("identity.events", *this_month))
            old, new = CheckpointSigner(os.urandom(32)), CheckpointSigner(os.urandom(32))
            signed = await ActivityEnvironment().run(
                AuditActivities(pool, old).sign_checkpoint, SignCheckpointInput("old-key")
            )
            assert signed.log_sequence == 4
            # Retention: the first month is archived and detached; sequences 1 and 2 go.
            await admin.execute("ALTER TABLE audit_log DETACH PARTITION audit_log_2020_01")
        finally:
            await admin.close()
        later = [make_envelope() for _ in range(3)]
        await consumer.handle_batch(decoded("identity.events", *later, first_offset=2))

        # The new key, trusting the one it replaced, goes on from that key's last checkpoint.
        rotated = AuditActivities(pool, new, [old.public_key])
        made = await ActivityEnvironment().run(
            rotated.sign_checkpoint, SignCheckpointInput("new-key")
        )
        assert (made.key_id, made.log_sequence) == (new.public_key.key_id, 7)
        keys = TrustedKeys(new.public_key, (old.public_key,))
        before = await verify_chain(pool, keys, to_sequence=6)
        assert before.ok, before.failure
        assert before.start_checkpoint is not None
        assert (before.start_checkpoint.key_id, before.first_sequence) == (old.public_key.key_id, 4)
        latest = await verify_chain(pool, keys)
        assert latest.ok and latest.start_checkpoint is not None
        assert latest.start_checkpoint.key_id == new.public_key.key_id
        # A key that trusts no other starts from genesis, which is gone for good.
        untrusting = AuditActivities(pool, CheckpointSigner(os.urandom(32)))
        with pytest.raises(ApplicationError) as broken:
            await ActivityEnvironment().run(
                untrusting.sign_checkpoint, SignCheckpointInput("untrusting")
            )
        assert broken.value.type == CHAIN_BROKEN
        assert "sequence 1 is missing" in broken.value.message


@asynccontextmanager
async def log_with_a_month_missing(
    settings: Settings,
) -> AsyncIterator[tuple[asyncpg.Pool, str, Callable[[], AbstractAsyncContextManager[None]]]]:
    """A scratch log of one row whose furthest month's partition is gone (its month
    comes into the window): its pool, that partition's name, and a long reader of the
    log (a verification's snapshot holds ACCESS SHARE on it to the end)."""
    async with scratch_database(settings) as name, audit_pool(settings, name) as pool:
        await append_rows(pool, [make_envelope()])
        admin = await superuser(settings, name)
        try:
            furthest: str = await admin.fetchval(
                "SELECT format('audit_log_%s', to_char(date_trunc('month', now()"
                " AT TIME ZONE 'UTC') + interval '2 months', 'YYYY_MM'))"
            )
            await admin.execute(f"DROP TABLE {furthest}")
        finally:
            await admin.close()

        @asynccontextmanager
        async def reading() -> AsyncIterator[None]:
            reader = await asyncpg.connect(scratch_dsn(settings, name))
            try:
                async with reader.transaction(isolation="repeatable_read", readonly=True):
                    await reader.fetchval("SELECT count(*) FROM audit_log")
                    yield
            finally:
                await reader.close()

        yield pool, furthest, reading


async def test_a_months_partition_made_behind_a_long_reader_gives_up_and_appends_go_on(
    settings: Settings, roles: None
) -> None:
    # Making a partition takes ACCESS EXCLUSIVE on the log. Queued behind a reader's
    # ACCESS SHARE (a verification's snapshot holds it to the end), it held every
    # append queued behind it in turn: all intake stopped for as long as the reader.
    async with log_with_a_month_missing(settings) as (pool, furthest, reading):
        activities = AuditActivities(pool, CheckpointSigner(os.urandom(32)))
        async with reading():
            with pytest.raises(asyncpg.LockNotAvailableError):
                await asyncio.wait_for(ActivityEnvironment().run(activities.ensure_partitions), 30)
            await asyncio.wait_for(append_rows(pool, [make_envelope()]), 30)
        made = await ActivityEnvironment().run(activities.ensure_partitions)
        assert made.created == 1
        assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", furthest)


async def test_a_starting_audit_service_waits_for_its_partitions_without_stopping_appends(
    settings: Settings, roles: None
) -> None:
    # The same step at start-up (a new pod while a verification reads the log) had no
    # lock timeout: queued behind the reader, it stopped the running pods' appends.
    async with log_with_a_month_missing(settings) as (pool, furthest, reading):
        async with reading():
            starting = asyncio.create_task(partitions_at_start(pool, patience_s=60))
            await asyncio.sleep(1.5)  # past its first lock timeout
            await asyncio.wait_for(append_rows(pool, [make_envelope()]), 10)
            assert not starting.done(), "it waits (retrying) while the reader holds the log"
        made = await asyncio.wait_for(starting, 30)
        assert made == 1
        assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", furthest)
        assert await pool.fetchval("SELECT count(*) FROM audit_log") == 2


async def test_two_makers_of_a_missing_month_one_commits_the_other_finds_it_made(
    settings: Settings, roles: None
) -> None:
    # Pods starting together at a month's turn (or one beside the scheduled run) both
    # found the month missing; the second's CREATE failed duplicate_table once the
    # first committed, and at start-up the process exited.
    async with log_with_a_month_missing(settings) as (pool, furthest, _):
        async with pool.acquire() as first, first.transaction():
            assert await ensure_partitions_in(first) == 1
            second = asyncio.create_task(ensure_partitions(pool))
            await asyncio.sleep(0.3)  # it waits on the first, which has not committed
            assert not second.done()
        assert await asyncio.wait_for(second, 10) == 0
        assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", furthest)
