"""Verifying the chain while events are appended (one snapshot, no false alarm), and
bounded checkpoint runs over a long log."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from temporalio.testing import ActivityEnvironment

from activities.audit import AuditActivities, SignCheckpointInput
from agora.config import Settings
from agora.db import create_pool
from contracts.agora.events.v1 import EventEnvelope
from gateway.routes.audit import event_of
from tests.integration.auditkit import make_envelope
from tests.integration.conftest import Services
from tests.integration.consumerkit import decoded
from workers.audit import checkpoints
from workers.audit.api import record_of
from workers.audit.chain import ChainWriter, Incoming, append_in
from workers.audit.consumer import AuditConsumer
from workers.audit.envelopes import check
from workers.audit.signing import CheckpointSigner, TrustedKeys, load_signer
from workers.audit.verification import verify_chain

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def pool(settings: Settings, services: Services) -> AsyncIterator[asyncpg.Pool]:
    services("audit")  # its migrations and signing key
    pool = await create_pool(settings, "audit", size=4)
    yield pool
    await pool.close()


async def test_events_appended_during_a_verification_are_not_a_cut_off_tail(
    settings: Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = AuditConsumer(ChainWriter(pool))
    await consumer.handle_batch(decoded("identity.events", make_envelope()))
    latest = checkpoints.latest
    appended: list[str] = []

    async def latest_while_an_event_commits(*args: object, **kwargs: object) -> object:
        # Between the verification's read of the head and its look beyond it, an
        # append commits on another connection, as the consumer does under load.
        if not appended:
            late = make_envelope()
            await consumer.handle_batch(decoded("identity.events", late))
            appended.append(late.event_id)
        return await latest(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoints, "latest", latest_while_an_event_commits)
    result = await verify_chain(pool, load_signer(settings).public_key)
    assert appended, "the append landed during the verification"
    assert result.ok, result.failure
    committed = await pool.fetchval("SELECT log_sequence FROM audit_chain_head")
    assert result.last_sequence < committed, "verified the snapshot, not the later rows"


async def test_checkpoints_catch_up_with_a_long_log_a_bounded_run_at_a_time(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    # After an outage the log may hold more rows than one attempt can verify: each run
    # verifies and signs at most max_rows past the last checkpoint, the next goes on.
    consumer = AuditConsumer(ChainWriter(pool))
    for _ in range(5):
        await consumer.handle_batch(decoded("identity.events", make_envelope()))
    # A key of its own: the platform's scheduled checkpoints cannot sign in between.
    signer = CheckpointSigner(os.urandom(32))
    activities = AuditActivities(pool, signer)
    signed: list[tuple[int, int]] = []
    for _ in range(2):
        async with pool.acquire() as conn:  # what the activity goes on from: its key's
            before = await checkpoints.latest(conn, key_ids=[signer.public_key.key_id])
        start = before.log_sequence if before is not None else 0
        made = await ActivityEnvironment().run(
            activities.sign_checkpoint, SignCheckpointInput(f"catch-up-{uuid.uuid4()}", max_rows=2)
        )
        signed.append((start, made.log_sequence))
    head = await pool.fetchval("SELECT log_sequence FROM audit_chain_head")
    assert [last - start for start, last in signed] == [2, 2], (signed, head)
    assert signed[1][0] == signed[0][1]  # the second run went on from the first's
    assert signed[1][1] < head


async def test_recorded_at_grows_with_the_log_sequence_whoever_began_first(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    # An appender whose transaction began first but won the head's lock second: its
    # row must not be stamped earlier than the row before it.
    early = make_envelope()
    [(_, record)] = decoded("identity.events", early)
    item = Incoming(check(early, bytes(record.value)), bytes(record.value), record.topic)
    async with pool.acquire() as slow, slow.transaction():
        await slow.execute("SELECT 1")  # its transaction (and now()) begins here
        other = make_envelope()
        await AuditConsumer(ChainWriter(pool)).handle_batch(decoded("identity.events", other))
        await append_in(slow, [item])
    rows = await pool.fetch(
        "SELECT log_sequence, recorded_at FROM audit_log WHERE event_id = ANY($1::uuid[])"
        " ORDER BY log_sequence",
        [early.event_id, other.event_id],
    )
    older, newer = rows
    assert newer["log_sequence"] > older["log_sequence"]
    assert newer["recorded_at"] >= older["recorded_at"], rows


async def test_after_a_signing_key_rotation_checkpoints_go_on_from_the_retired_keys_last(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    # The new key trusts the one it replaced: its first run verifies from that key's
    # last checkpoint (the rows before it may be detached by then), not from genesis.
    old = load_signer(settings)
    new = CheckpointSigner(os.urandom(32))
    consumer = AuditConsumer(ChainWriter(pool))
    await consumer.handle_batch(decoded("identity.events", make_envelope()))
    last_old, _ = await checkpoints.sign_head(pool, old, f"before-rotation-{uuid.uuid4()}")
    for _ in range(4):
        await consumer.handle_batch(decoded("identity.events", make_envelope()))
    rotated = AuditActivities(pool, new, [old.public_key])
    made = await ActivityEnvironment().run(
        rotated.sign_checkpoint, SignCheckpointInput(f"rotated-{uuid.uuid4()}", max_rows=3)
    )
    assert (made.key_id, made.log_sequence) == (new.public_key.key_id, last_old.log_sequence + 3)
    keys = TrustedKeys(new.public_key, (old.public_key,))
    verified = await verify_chain(pool, keys)
    assert verified.ok, verified.failure
    assert verified.start_checkpoint is not None
    assert verified.start_checkpoint.key_id == new.public_key.key_id
    # A key that trusts no other starts from genesis (in bounded runs); the old key's
    # checkpoints still verify the chain for whoever trusts that key alone.
    alone = AuditActivities(pool, CheckpointSigner(os.urandom(32)))
    first = await ActivityEnvironment().run(
        alone.sign_checkpoint, SignCheckpointInput(f"alone-{uuid.uuid4()}", max_rows=3)
    )
    assert first.log_sequence == 3
    assert (await verify_chain(pool, old.public_key)).ok
    # The platform's own key signs last again, for the tests after this one.
    await checkpoints.sign_head(pool, old, f"after-rotation-{uuid.uuid4()}")


async def test_the_api_gives_the_bytes_the_hash_covers_not_the_event_re_encoded(
    pool: asyncpg.Pool,
) -> None:
    # A producer (not betterproto2) that writes the envelope's fields in another
    # order: audit keeps and hashes its bytes as received, and an auditor checking
    # `hash` from the API's answer must be given those bytes.
    envelope = make_envelope()
    later_first = EventEnvelope(payload=envelope.payload, payload_type=envelope.payload_type)
    rest = EventEnvelope.parse(bytes(envelope))
    rest.payload, rest.payload_type = b"", ""
    raw = bytes(later_first) + bytes(rest)  # protobuf merges concatenated messages
    assert raw != bytes(envelope) and EventEnvelope.parse(raw) == envelope
    [(_, record)] = decoded("identity.events", envelope)
    record = dataclasses.replace(record, value=raw, serialized_value_size=len(raw))
    await AuditConsumer(ChainWriter(pool)).handle_batch([(envelope, record)])
    row = await pool.fetchrow("SELECT * FROM audit_log WHERE event_id = $1", envelope.event_id)
    answered = event_of(record_of(row))
    canonical = base64.b64decode(answered["canonical"])
    assert canonical == raw
    assert (
        hashlib.sha256(bytes.fromhex(answered["prev_hash"]) + canonical).hexdigest()
        == (answered["hash"])
    )
