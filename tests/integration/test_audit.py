"""The audit log: every event once, hash-chained, immutable, signed, verifiable and queryable."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from temporalio.client import Client, ScheduleOverlapPolicy, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError

from activities.audit import CHAIN_BROKEN
from agora import temporal
from agora.config import Settings
from agora.db import create_pool
from agora.errors import PoisonMessage
from agora.grpc import Channels
from contracts.agora.audit.v1 import (
    AggregateRef,
    AuditServiceStub,
    ExportAggregateRequest,
    GetLatestCheckpointRequest,
    GetPublicKeyRequest,
    QueryEventsRequest,
    VerifyChainRequest,
)
from contracts.agora.common.v1 import PageRequest
from contracts.agora.events.v1 import EventEnvelope
from tests.integration.auditkit import insert_copy, make_envelope, publish, recorded, superuser
from tests.integration.conftest import Services
from tests.integration.consumerkit import decoded
from tests.integration.observabilitykit import scrape
from tests.integration.waiting import eventually
from workers.audit import checkpoints, verification
from workers.audit.chain import ChainWriter, Incoming, append_in
from workers.audit.consumer import AuditConsumer
from workers.audit.envelopes import check
from workers.audit.signing import PublicKey, load_signer, statement
from workers.audit.verification import before_first, beyond_head, verify_chain
from workflows.audit import CHECKPOINT_SCHEDULE_ID, SignCheckpointWorkflow
from workflows.audit import TASK_QUEUE as AUDIT_QUEUE
from workflows.identity import (
    TASK_QUEUE,
    RegisterAccountInput,
    RegisterAccountWorkflow,
    register_workflow_id,
)

pytestmark = pytest.mark.integration
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


@pytest.fixture(scope="module")
def running(services: Services) -> None:
    services("identity")
    services("audit")


@pytest_asyncio.fixture(scope="module")
async def pool(settings: Settings, running: None) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings, "audit", size=4)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="module")
async def audit(settings: Settings, running: None) -> AsyncIterator[AuditServiceStub]:
    channels = Channels(settings, caller="gateway")
    yield AuditServiceStub(channels.get("audit"))
    channels.close()


@pytest_asyncio.fixture(scope="module")
async def client(settings: Settings) -> Client:
    return await temporal.connect(settings)


async def register(client: Client) -> tuple[str, str, str]:
    """Register an account through identity's workflow: (account id, workflow id, run id)."""
    email = f"audit-{uuid.uuid4().hex[:10]}@example.com"
    account_id = str(uuid.uuid4())
    handle = await client.start_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(account_id, email, "Audited", HASH),
        id=register_workflow_id(email),
        task_queue=TASK_QUEUE,
    )
    await handle.result()
    return account_id, handle.id, handle.result_run_id or ""


async def account_events(pool: asyncpg.Pool, account_id: str) -> list[asyncpg.Record]:
    async def rows() -> list[asyncpg.Record]:
        return await pool.fetch(
            "SELECT * FROM audit_log WHERE aggregate_type = 'account' AND aggregate_id = $1",
            account_id,
        )

    return await eventually(rows, within=60, what=f"an audited event for account {account_id}")


# Recording ------------------------------------------------------------------


async def checkpoint_refused(client: Client) -> ApplicationError:
    """The scheduled checkpoint's workflow, run now: it must refuse to sign; its failure."""
    with pytest.raises(WorkflowFailureError) as refused:
        await client.execute_workflow(
            SignCheckpointWorkflow.run,
            id=f"audit-checkpoint-test-{uuid.uuid4().hex[:8]}",
            task_queue=AUDIT_QUEUE,
            execution_timeout=timedelta(seconds=60),
        )
    cause = refused.value.cause
    assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError)
    return cause.cause


async def test_a_registration_is_recorded_with_its_workflow_trace_and_chained_hash(
    pool: asyncpg.Pool, client: Client
) -> None:
    account_id, workflow_id, run_id = await register(client)
    [row] = await account_events(pool, account_id)
    assert row["event_type"] == "identity.AccountRegistered"
    assert row["producer"] == "identity" and row["topic"] == "identity.events"
    assert (row["workflow_id"], row["run_id"]) == (workflow_id, run_id)
    assert len(row["trace_id"]) == 32
    previous = await pool.fetchval(
        "SELECT hash FROM audit_log WHERE log_sequence = $1", row["log_sequence"] - 1
    )
    assert bytes(row["prev_hash"]) == bytes(previous or bytes(32))
    assert bytes(row["hash"]) == hashlib.sha256(row["prev_hash"] + row["canonical"]).digest()


async def test_a_redelivered_event_is_stored_once(settings: Settings, pool: asyncpg.Pool) -> None:
    envelope = make_envelope()
    await publish(settings, "identity.events", bytes(envelope), bytes(envelope))
    later = make_envelope()  # published after both copies: once it is in, both were handled
    await publish(settings, "identity.events", bytes(later))
    await recorded(pool, envelope.event_id, later.event_id)
    count = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE event_id = $1", uuid.UUID(envelope.event_id)
    )
    assert count == 1


async def test_an_unknown_payload_type_is_recorded(settings: Settings, pool: asyncpg.Pool) -> None:
    envelope = make_envelope()
    envelope.payload_type = "agora.identity.v2.SomethingNew"
    envelope.event_type = "identity.SomethingNew"
    await publish(settings, "identity.events", bytes(envelope))
    [row] = await recorded(pool, envelope.event_id)
    assert row["payload_type"] == "agora.identity.v2.SomethingNew"
    # Counted (agora_audit_unknown_payload_type) by the append that stored it, once:
    # a redelivery, or an append retried after a database error, counts nothing more.
    async with pool.acquire() as conn, conn.transaction():
        again = await append_in(conn, [incoming(envelope)])
    assert (again.appended, again.duplicates, again.unknown_payloads) == (0, 1, ())
    another = make_envelope()
    another.payload_type = "agora.identity.v2.SomethingNew"
    another.event_type = "identity.SomethingNew"
    async with pool.acquire() as conn, conn.transaction():
        stored = await append_in(conn, [incoming(another), incoming(make_envelope())])
    assert stored.appended == 2
    assert stored.unknown_payloads == ((another.event_id, "agora.identity.v2.SomethingNew"),)


def incoming(envelope: EventEnvelope) -> Incoming:
    """The envelope as the consumer hands it to the chain, checked."""
    value = bytes(envelope)
    return Incoming(check(envelope, value), value, "identity.events")


async def test_malformed_events_go_to_the_dlq_with_a_reason_and_the_chain_goes_on(
    settings: Settings, pool: asyncpg.Pool, audit: AuditServiceStub
) -> None:
    wrong_type = make_envelope()
    wrong_type.event_type = "identity.NoSuchEvent"
    garbage = b"\xff\x00 not protobuf at all " + uuid.uuid4().bytes
    after = make_envelope()
    dlq = AIOKafkaConsumer(
        "catalog.events.dlq",
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"test-dlq-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",  # our records are told apart by their unique bytes
    )
    await dlq.start()
    try:
        await publish(settings, "catalog.events", bytes(wrong_type), garbage, bytes(after))
        await recorded(pool, after.event_id)
        reasons: dict[bytes, str] = {}
        deadline = asyncio.get_running_loop().time() + 30
        while len(reasons) < 2 and asyncio.get_running_loop().time() < deadline:
            batch = await dlq.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    headers = dict(record.headers)
                    if headers.get("dlq-group") == b"audit" and record.value in (
                        bytes(wrong_type),
                        garbage,
                    ):
                        reasons[record.value] = headers["dlq-reason"].decode()
    finally:
        await dlq.stop()
    assert "unknown event type 'identity.NoSuchEvent'" in reasons[bytes(wrong_type)]
    assert "undecodable" in reasons[garbage] or "event_id" in reasons[garbage]
    stored = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE event_id = $1", uuid.UUID(wrong_type.event_id)
    )
    assert stored == 0
    assert (await audit.verify_chain(VerifyChainRequest(from_genesis=True))).ok


async def test_a_batch_is_appended_in_one_transaction_in_offset_order_and_duplicates_absorbed(
    pool: asyncpg.Pool,
) -> None:
    consumer = AuditConsumer(ChainWriter(pool))
    earlier = make_envelope()
    await consumer.handle_batch(decoded("identity.events", earlier))
    first, second, third = (make_envelope() for _ in range(3))
    # A redelivery of an event already in the log, and one repeated inside the batch.
    batch = decoded("identity.events", first, second, earlier, third, second, first_offset=10)
    await consumer.handle_batch(batch)

    rows = await recorded(pool, first.event_id, second.event_id, third.event_id)
    assert [str(r["event_id"]) for r in rows] == [first.event_id, second.event_id, third.event_id]
    sequences = [r["log_sequence"] for r in rows]
    assert sequences == list(range(sequences[0], sequences[0] + 3)), "appended together"
    assert len({r["recorded_at"] for r in rows}) == 1, "one transaction"
    assert bytes(rows[1]["prev_hash"]) == bytes(rows[0]["hash"])
    stored = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE event_id = $1", uuid.UUID(earlier.event_id)
    )
    assert stored == 1


async def test_a_batch_with_a_malformed_envelope_appends_nothing_until_it_is_isolated(
    pool: asyncpg.Pool,
) -> None:
    good, bad = make_envelope(), make_envelope()
    bad.event_type = "identity.NoSuchEvent"
    consumer = AuditConsumer(ChainWriter(pool))
    with pytest.raises(PoisonMessage):
        await consumer.handle_batch(decoded("identity.events", good, bad))
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE event_id = $1", uuid.UUID(good.event_id)
        )
        == 0
    )
    # The consumer then hands the events over one at a time: only the malformed one fails.
    await consumer.handle_batch(decoded("identity.events", good))
    with pytest.raises(PoisonMessage, match=r"unknown event type 'identity\.NoSuchEvent'"):
        await consumer.handle_batch(decoded("identity.events", bad, first_offset=1))
    await recorded(pool, good.event_id)


async def test_an_envelope_postgresql_cannot_store_is_poison_not_retried_forever(
    pool: asyncpg.Pool,
) -> None:
    # Retried, either would stall the whole intake: the next expected sequence
    # overflows a bigint, and an id past the btree entry limit (2704 bytes) cannot be
    # indexed. Random hex, which the index would not compress below the limit.
    aggregate_id = f"overflowing-{uuid.uuid4().hex[:8]}"
    overflowing = make_envelope(aggregate_id=aggregate_id, sequence=2**63 - 1)
    too_long = make_envelope(aggregate_id=secrets.token_hex(1500))
    consumer = AuditConsumer(ChainWriter(pool))
    for bad, reason in ((overflowing, "sequence"), (too_long, "aggregate_id is longer")):
        with pytest.raises(PoisonMessage, match=reason):
            await consumer.handle_batch(decoded("identity.events", bad))
        stored = await pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE event_id = $1", uuid.UUID(bad.event_id)
        )
        assert stored == 0
    # The aggregate's next event is recorded: nothing of the refused one was kept.
    after = make_envelope(aggregate_id=aggregate_id, sequence=1)
    await consumer.handle_batch(decoded("identity.events", after, first_offset=1))
    await recorded(pool, after.event_id)


async def test_gaps_and_reordering_in_an_aggregate_sequence_are_reported(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    aggregate_id = f"gappy-{uuid.uuid4().hex[:8]}"
    first, third, second = (make_envelope(aggregate_id=aggregate_id, sequence=n) for n in (1, 3, 2))
    await publish(settings, "identity.events", bytes(first), bytes(third), bytes(second))
    await recorded(pool, first.event_id, third.event_id, second.event_id)
    anomalies = await pool.fetch(
        "SELECT kind, expected, got FROM audit_sequence_anomalies WHERE aggregate_id = $1"
        " ORDER BY log_sequence",
        aggregate_id,
    )
    assert [tuple(a) for a in anomalies] == [("gap", 2, 3), ("reordered", 4, 2)]


# Immutability ---------------------------------------------------------------


async def test_the_service_role_can_only_insert_and_select(pool: asyncpg.Pool) -> None:
    for sql in (
        "UPDATE audit_log SET aggregate_id = 'x' WHERE log_sequence = 1",
        "DELETE FROM audit_log WHERE log_sequence = 1",
        "TRUNCATE audit_log",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute(sql)


async def test_the_service_role_cannot_add_a_row_for_a_recorded_sequence_or_event_id(
    settings: Settings, pool: asyncpg.Pool, client: Client
) -> None:
    # The log's primary key (log_sequence, recorded_at) takes a second row for an old
    # sequence under another recorded_at; audit_entries, one row per sequence and per
    # event id written by the log's insert trigger, refuses it with the insert.
    account_id, _, _ = await register(client)
    [row] = await account_events(pool, account_id)
    await account_events(pool, (await register(client))[0])  # a row after it
    target = int(row["log_sequence"])
    forged_at = row["recorded_at"] + timedelta(microseconds=1)
    beyond = int(await pool.fetchval("SELECT log_sequence FROM audit_chain_head")) + 10**9
    partition = await pool.fetchval(
        "SELECT tableoid::regclass::text FROM audit_log WHERE log_sequence = $1", target
    )
    try:
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.UniqueViolationError, match="audit_entries"):
                # A made-up event at an old sequence.
                await insert_copy(conn, row, recorded_at=forged_at, event_id=uuid.uuid4())
            with pytest.raises(asyncpg.UniqueViolationError, match="audit_entries"):
                await insert_copy(conn, row, log_sequence=beyond)  # its event id again
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                # Past the parent's trigger: a partition by name (none is granted).
                await conn.execute(f"INSERT INTO {partition} SELECT * FROM audit_log WHERE false")
    finally:
        conn = await superuser(settings)
        try:  # whatever got in (only without audit_entries)
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                "DELETE FROM audit_log WHERE (log_sequence = $1 AND recorded_at = $2)"
                " OR log_sequence = $3",
                target,
                forged_at,
                beyond,
            )
        finally:
            await conn.close()


async def test_an_event_id_planted_ahead_of_its_event_hides_nothing(pool: asyncpg.Pool) -> None:
    # Dedupe reads audit_entries, which only the log's insert trigger writes: an id is
    # there only for a row the log holds. The service's role may not write it; it keeps
    # its INSERT on audit_event_ids for one release (rolling deploy), which nothing reads.
    coming = make_envelope()
    async with pool.acquire() as conn:
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO audit_event_ids (event_id, log_sequence) VALUES ($1, $2)",
                uuid.UUID(coming.event_id),
                10**12,
            )
    await AuditConsumer(ChainWriter(pool)).handle_batch(decoded("identity.events", coming))
    stored = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE event_id = $1", uuid.UUID(coming.event_id)
    )
    assert stored == 1, "the real event was dropped as a redelivery of the planted id"
    assert not await pool.fetchval("SELECT has_table_privilege('audit_entries', 'INSERT')")


@pytest.mark.parametrize("as_role", ["audit_owner", "postgres"])
async def test_triggers_reject_update_delete_and_truncate_even_for_the_owner_and_superuser(
    settings: Settings, pool: asyncpg.Pool, client: Client, as_role: str
) -> None:
    await account_events(pool, (await register(client))[0])  # at least one row
    partition = await pool.fetchval(
        "SELECT tableoid::regclass::text FROM audit_log ORDER BY log_sequence DESC LIMIT 1"
    )
    conn = await superuser(settings)
    try:
        if as_role != "postgres":
            await conn.execute(f"SET ROLE {as_role}")
        for sql in (
            "UPDATE audit_log SET aggregate_id = 'x'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
            f"TRUNCATE {partition}",
            "DELETE FROM audit_event_ids",
            "DELETE FROM audit_entries",
            "UPDATE audit_checkpoints SET key_id = 'x'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(sql)
    finally:
        await conn.close()


# Checkpoints and verification -----------------------------------------------


async def test_the_schedule_signs_checkpoints_with_the_published_key(
    pool: asyncpg.Pool, audit: AuditServiceStub, client: Client
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM audit_checkpoints")
    # Buffered, not skipped, when the schedule's own run is still going (its overlap
    # policy skips): a skipped trigger left the test waiting for the next interval.
    await client.get_schedule_handle(CHECKPOINT_SCHEDULE_ID).trigger(
        overlap=ScheduleOverlapPolicy.BUFFER_ONE
    )

    async def signed() -> bool:
        return await pool.fetchval("SELECT count(*) FROM audit_checkpoints") > before

    await eventually(signed, within=30, what="the triggered run to sign a checkpoint")
    latest = (await audit.get_latest_checkpoint(GetLatestCheckpointRequest())).checkpoint
    published = await audit.get_public_key(GetPublicKeyRequest())
    assert latest is not None and latest.signed_at is not None
    key = PublicKey.parse(published.public_key_pem)
    assert key.key_id == published.key_id == latest.key_id
    assert key.verifies(
        latest.signature, statement(latest.log_sequence, latest.head_hash, latest.signed_at)
    )
    verified = await audit.verify_chain(VerifyChainRequest())
    assert verified.ok, verified.failure
    assert verified.start_checkpoint is not None


async def test_a_tail_cut_off_with_the_head_set_back_is_named(
    pool: asyncpg.Pool, audit: AuditServiceStub, client: Client
) -> None:
    # Read-only: the check is asked about a head one row short of the real one, as a
    # superuser who deleted the last row and set the head back would leave it.
    account_id, _, _ = await register(client)
    await account_events(pool, account_id)  # its event is in: the log holds a row to cut
    published = await audit.get_public_key(GetPublicKeyRequest())
    key = PublicKey.parse(published.public_key_pem)
    # One snapshot for the three reads: events of other tests may append meanwhile.
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        head = int(await conn.fetchval("SELECT log_sequence FROM audit_chain_head"))
        assert await beyond_head(conn, key, head) == ""
        cut = await beyond_head(conn, key, head - 1)
    assert cut == f"the log holds rows up to {head}, beyond its head at {head - 1}"


def run_cli(settings: Settings, *args: str) -> tuple[int, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "workers.audit.verify", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "AGORA_PROFILE": settings.profile},
        timeout=120,
    )
    # Its log is JSON lines like every service's; a failure is an error naming the row.
    report = json.loads(result.stdout)
    if not report["ok"]:
        logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
        assert any(
            (line["service"], line["level"], line.get("first_bad_sequence"))
            == ("audit-verify", "ERROR", report["first_bad_sequence"])
            for line in logged
        ), result.stderr
    return result.returncode, report


async def test_verification_names_exactly_the_row_a_superuser_tampered_with(
    settings: Settings, pool: asyncpg.Pool, audit: AuditServiceStub, client: Client
) -> None:
    account_id, _, _ = await register(client)
    [row] = await account_events(pool, account_id)
    await register(client)  # a row after it, so it is not the head
    target = int(row["log_sequence"])
    original = bytes(row["canonical"])
    tampered = original.replace(account_id.encode(), str(uuid.uuid4()).encode())
    conn = await superuser(settings)
    try:
        # The superuser bypasses the triggers by turning them off for the session.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "UPDATE audit_log SET canonical = $1 WHERE log_sequence = $2", tampered, target
        )
        answer = await audit.verify_chain(VerifyChainRequest(from_genesis=True))
        assert not answer.ok
        assert answer.first_bad_sequence == target, answer.failure
        code, cli = run_cli(settings, "--from-genesis")
        assert code == 1 and cli["first_bad_sequence"] == target
    finally:
        await conn.execute(
            "UPDATE audit_log SET canonical = $1 WHERE log_sequence = $2", original, target
        )
        await conn.close()
    code, cli = run_cli(settings, "--from-genesis")
    assert code == 0 and cli["ok"] is True


async def verification_failures(settings: Settings) -> float:
    """agora_audit_verification_failures_total as the audit process exports it now (it
    counts for the process's lifetime: compare it with a reading taken before)."""
    url = f"http://{settings.host}:{settings.side_port('audit')}/metrics"
    text = await asyncio.to_thread(scrape, url)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agora_audit_verification_failures_total")
    )


async def test_a_broken_chain_is_never_signed_and_pages(
    settings: Settings, pool: asyncpg.Pool, client: Client
) -> None:
    account_id, _, _ = await register(client)
    [row] = await account_events(pool, account_id)
    target = int(row["log_sequence"])
    # The scheduled checkpoint verifies from the last one: this row is after it.
    assert (await pool.fetchval("SELECT max(log_sequence) FROM audit_checkpoints") or 0) < target
    original = bytes(row["canonical"])
    before = await pool.fetchval("SELECT count(*) FROM audit_checkpoints")
    failures_before = await verification_failures(settings)
    conn = await superuser(settings)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "UPDATE audit_log SET canonical = $1 WHERE log_sequence = $2",
            original.replace(account_id.encode(), str(uuid.uuid4()).encode()),
            target,
        )
        refusal = await checkpoint_refused(client)
        assert refusal.type == CHAIN_BROKEN and str(target) in refusal.message
        assert await pool.fetchval("SELECT count(*) FROM audit_checkpoints") == before
    finally:
        await conn.execute(
            "UPDATE audit_log SET canonical = $1 WHERE log_sequence = $2", original, target
        )
        await conn.close()

    async def counted() -> float | None:  # what AuditChainVerificationFailed pages on
        failures = await verification_failures(settings)
        return failures if failures > failures_before else None

    await eventually(counted, within=30, what="the refused checkpoint to count a failure")


async def test_a_rewritten_column_is_caught_even_with_the_hash_intact(
    settings: Settings, pool: asyncpg.Pool, audit: AuditServiceStub, client: Client
) -> None:
    account_id, _, _ = await register(client)
    [row] = await account_events(pool, account_id)
    conn = await superuser(settings)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "UPDATE audit_log SET workflow_id = 'someone-else' WHERE log_sequence = $1",
            row["log_sequence"],
        )
        answer = await audit.verify_chain(VerifyChainRequest(from_genesis=True))
        assert (answer.ok, answer.first_bad_sequence) == (False, row["log_sequence"])
        assert "workflow_id" in answer.failure
    finally:
        await conn.execute(
            "UPDATE audit_log SET workflow_id = $1 WHERE log_sequence = $2",
            row["workflow_id"],
            row["log_sequence"],
        )
        await conn.close()


async def test_a_second_row_with_a_sequence_is_named_even_where_a_chunk_of_the_walk_ends(
    settings: Settings,
    pool: asyncpg.Pool,
    audit: AuditServiceStub,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account_id, _, _ = await register(client)
    [row] = await account_events(pool, account_id)
    later, _, _ = await register(client)  # a row after it, so it is not the head
    await account_events(pool, later)
    target = int(row["log_sequence"])
    # The primary key is (log_sequence, recorded_at): another recorded_at makes a second row.
    forged_at = row["recorded_at"] + timedelta(microseconds=1)
    key = PublicKey.parse((await audit.get_public_key(GetPublicKeyRequest())).public_key_pem)
    conn = await superuser(settings)

    async def uncounted(*_: object) -> verification.Counted:
        return verification.Counted()

    try:
        # Triggers off: with them, audit_entries refuses a second row for the sequence.
        await conn.execute("SET session_replication_role = replica")
        await insert_copy(conn, row, recorded_at=forged_at)
        answer = await audit.verify_chain(VerifyChainRequest(from_genesis=True))
        assert (answer.ok, answer.first_bad_sequence) == (False, target), answer.failure
        assert f"sequence {target} appears twice in the log" in answer.failure
        # The walk itself (the count, which would name it first, left out here) lets no
        # second row by: where a chunk of it ends, and at the end of what it verifies.
        monkeypatch.setattr(verification, "count_rows", uncounted)
        for chunk, to_sequence in ((target, 0), (target, target)):
            monkeypatch.setattr(verification, "CHUNK", chunk)
            walked = await verify_chain(pool, key, from_genesis=True, to_sequence=to_sequence)
            assert (walked.ok, walked.first_bad_sequence) == (False, target), walked.failure
            assert f"sequence {target} appears more than once in the log" in walked.failure
    finally:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "DELETE FROM audit_log WHERE log_sequence = $1 AND recorded_at = $2", target, forged_at
        )
        await conn.close()
    verified = await audit.verify_chain(VerifyChainRequest(from_genesis=True))
    assert verified.ok, verified.failure


async def test_a_row_planted_below_the_latest_checkpoint_is_named_by_the_on_demand_checks(
    settings: Settings, pool: asyncpg.Pool, audit: AuditServiceStub, client: Client
) -> None:
    # A walk from the latest checkpoint never reaches a row below it; the count of the
    # whole log does. Only a superuser with triggers off gets such a row in now.
    account_id, _, _ = await register(client)
    [row] = await account_events(pool, account_id)
    await account_events(pool, (await register(client))[0])  # a row after it
    target = int(row["log_sequence"])
    signed, _ = await checkpoints.sign_head(pool, load_signer(settings), f"t-{uuid.uuid4()}")
    assert signed.log_sequence > target
    forged_at = row["recorded_at"] + timedelta(microseconds=1)
    conn = await superuser(settings)
    try:
        await conn.execute("SET session_replication_role = replica")
        await insert_copy(conn, row, recorded_at=forged_at, event_id=uuid.uuid4())
        answer = await audit.verify_chain(VerifyChainRequest())
        assert answer.start_checkpoint is not None
        assert answer.start_checkpoint.log_sequence >= signed.log_sequence
        assert (answer.ok, answer.first_bad_sequence) == (False, target), answer.failure
        assert f"sequence {target} appears twice in the log" in answer.failure
        code, cli = run_cli(settings)
        assert (code, cli["first_bad_sequence"]) == (1, target), cli
        # The scheduled checkpoint counts only the range it walks (a whole-log count
        # outgrows its activity's 30 s at scale): it signs on, the row left to these.
        scheduled = await verify_chain(pool, load_signer(settings).public_key, whole_log=False)
        assert scheduled.ok, scheduled.failure
    finally:
        await conn.execute(
            "DELETE FROM audit_log WHERE log_sequence = $1 AND recorded_at = $2", target, forged_at
        )
        await conn.close()
    verified = await audit.verify_chain(VerifyChainRequest())
    assert verified.ok, verified.failure


async def test_a_row_below_sequence_1_is_refused_to_the_service_and_the_superuser(
    settings: Settings, pool: asyncpg.Pool, client: Client
) -> None:
    # A row at 0 (or below) would come first in its aggregate's queries and exports.
    account_id, _, _ = await register(client)
    [row] = await account_events(pool, account_id)
    conn = await superuser(settings)
    try:
        await conn.execute("SET session_replication_role = replica")  # no triggers: the CHECK
        for sequence in (0, -1):
            with pytest.raises(asyncpg.CheckViolationError):
                await insert_copy(conn, row, log_sequence=sequence)
        async with pool.acquire() as service:
            with pytest.raises(asyncpg.CheckViolationError):
                await insert_copy(service, row, log_sequence=0)
    finally:
        await conn.execute("DELETE FROM audit_log WHERE log_sequence < 1")
        await conn.close()


async def test_a_second_row_is_named_when_a_missing_row_evens_out_the_count(
    settings: Settings, pool: asyncpg.Pool, audit: AuditServiceStub, client: Client
) -> None:
    rows = []
    for _ in range(2):
        account_id, _, _ = await register(client)
        rows += await account_events(pool, account_id)
    await account_events(pool, (await register(client))[0])  # a row after them: not the head
    repeated, missing = rows
    forged_at = repeated["recorded_at"] + timedelta(microseconds=1)
    conn = await superuser(settings)
    try:
        await conn.execute("SET session_replication_role = replica")
        await insert_copy(conn, repeated, recorded_at=forged_at)
        await conn.execute("DELETE FROM audit_log WHERE log_sequence = $1", missing["log_sequence"])
        answer = await audit.verify_chain(VerifyChainRequest(from_genesis=True))
        assert (answer.ok, answer.first_bad_sequence) == (False, repeated["log_sequence"])
        assert "appears more than once" in answer.failure
    finally:
        await conn.execute(
            "DELETE FROM audit_log WHERE log_sequence = $1 AND recorded_at = $2",
            repeated["log_sequence"],
            forged_at,
        )
        if not await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE log_sequence = $1", missing["log_sequence"]
        ):
            await insert_copy(conn, missing)
        await conn.close()
    verified = await audit.verify_chain(VerifyChainRequest(from_genesis=True))
    assert verified.ok, verified.failure


async def test_verification_names_a_row_below_sequence_1(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    # Only a log without the CHECK (before migration 0003) can hold one: the
    # constraint is dropped inside a transaction that is rolled back.
    row = await pool.fetchrow("SELECT * FROM audit_log ORDER BY log_sequence LIMIT 1")
    conn = await superuser(settings)
    rolled_back = conn.transaction()
    await rolled_back.start()
    try:
        assert await before_first(conn) == ""
        await conn.execute("ALTER TABLE audit_log DROP CONSTRAINT audit_log_sequence_positive")
        # Copies of a row: past audit_entries' unique event id with triggers off.
        await conn.execute("SET LOCAL session_replication_role = replica")
        await insert_copy(conn, row, log_sequence=0)
        assert await before_first(conn) == "the log holds a row at sequence 0, before its first (1)"
        await insert_copy(conn, row, log_sequence=-3)
        assert await before_first(conn) == (
            "the log holds 2 rows before its first sequence (1), down to sequence -3"
        )
    finally:
        await rolled_back.rollback()
        await conn.close()
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE log_sequence < 1") == 0


# Queries and export -----------------------------------------------------------


async def test_queries_by_aggregate_trace_workflow_and_time_page_in_log_order(
    settings: Settings, pool: asyncpg.Pool, audit: AuditServiceStub
) -> None:
    aggregate_id = f"paged-{uuid.uuid4().hex[:8]}"
    envelopes = [make_envelope(aggregate_id=aggregate_id, sequence=n) for n in range(1, 6)]
    await publish(settings, "identity.events", *(bytes(e) for e in envelopes))
    rows = await recorded(pool, *(e.event_id for e in envelopes))

    seen: list[str] = []
    cursor = ""
    while True:
        page = await audit.query_events(
            QueryEventsRequest(
                aggregate=AggregateRef(aggregate_type="account", aggregate_id=aggregate_id),
                page=PageRequest(page_size=2, cursor=cursor),
            )
        )
        seen += [r.event.event_id for r in page.records if r.event]
        if not page.page or not page.page.has_more:
            break
        cursor = page.page.next_cursor
    assert seen == [e.event_id for e in envelopes]

    trace_id = envelopes[2].traceparent.split("-")[1]
    by_trace = await audit.query_events(QueryEventsRequest(trace_id=trace_id))
    assert [r.event.event_id for r in by_trace.records if r.event] == [envelopes[2].event_id]

    in_time = await audit.query_events(
        QueryEventsRequest(
            aggregate=AggregateRef(aggregate_type="account", aggregate_id=aggregate_id),
            start_time=rows[1]["occurred_at"],
            end_time=rows[3]["occurred_at"],
        )
    )
    assert [r.log_sequence for r in in_time.records] == [r["log_sequence"] for r in rows[1:3]]


async def test_bad_query_parameters_are_invalid_arguments(audit: AuditServiceStub) -> None:
    for request in (
        QueryEventsRequest(page=PageRequest(cursor="not-ours")),
        QueryEventsRequest(page=PageRequest(page_size=10_000)),
        QueryEventsRequest(trace_id="XYZ"),
        QueryEventsRequest(aggregate=AggregateRef(aggregate_type="account")),
    ):
        with pytest.raises(GRPCError) as caught:
            await audit.query_events(request)
        assert caught.value.status == Status.INVALID_ARGUMENT


async def test_an_export_holds_the_workflow_history_linked_to_the_activity_that_wrote_the_event(
    settings: Settings, pool: asyncpg.Pool, audit: AuditServiceStub, client: Client
) -> None:
    account_id, workflow_id, run_id = await register(client)
    [row] = await account_events(pool, account_id)
    export = await audit.export_aggregate(
        ExportAggregateRequest(
            aggregate=AggregateRef(aggregate_type="account", aggregate_id=account_id)
        ),
        timeout=timedelta(seconds=20).total_seconds(),
    )
    [event] = export.events
    assert event.record is not None and event.record.log_sequence == row["log_sequence"]
    assert event.activity_type == "identity.create_account"
    [flow] = export.workflows
    assert (flow.workflow_id, flow.run_id, flow.workflow_type) == (
        workflow_id,
        run_id,
        "RegisterAccount",
    )
    history = json.loads(flow.history_json)
    [closing] = [e for e in history["events"] if int(e["eventId"]) == event.workflow_event_id]
    assert closing["eventType"] in ("EVENT_TYPE_ACTIVITY_TASK_COMPLETED", "ActivityTaskCompleted")
    port = settings.ports["temporal_ui"]
    assert flow.ui_url.startswith(f"http://{settings.host}:{port}/namespaces/default/workflows/")
    assert flow.ui_url.endswith(f"/{run_id}/history")
