"""What verification and export vouch for, each on a scratch database of its own: the
chain head's own hash, the order rows were recorded in, and an export whose caps
never crowd out the aggregate's own events and never cut silently."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.audit import CHAIN_BROKEN, AuditActivities, SignCheckpointInput
from agora import temporal
from agora.config import Settings
from contracts.agora.audit.v1 import (
    AggregateRef,
    ExportAggregateRequest,
    GetLatestCheckpointRequest,
)
from contracts.agora.events.v1 import EventEnvelope
from tests.integration.auditkit import make_envelope, scratch_database, scratch_dsn, superuser
from tests.integration.conftest import Services
from tests.integration.consumerkit import decoded
from workers.audit import api, checkpoints, queries
from workers.audit.api import AuditApi
from workers.audit.chain import ChainWriter
from workers.audit.consumer import AuditConsumer
from workers.audit.signing import CheckpointSigner, TrustedKeys
from workers.audit.verification import Counted, count_rows, verify_chain

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def roles(services: Services) -> None:
    services("audit")  # the stack's audit and audit_owner roles exist once it has started


@asynccontextmanager
async def scratch_log(settings: Settings) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A scratch database migrated like audit's, and the audit role's pool on it."""
    async with scratch_database(settings) as name:
        pool = await asyncpg.create_pool(scratch_dsn(settings, name), min_size=1, max_size=2)
        assert pool is not None
        try:
            yield name, pool
        finally:
            await pool.close()


async def append(pool: asyncpg.Pool, *envelopes: EventEnvelope) -> None:
    """One append (one transaction, one recorded_at), as the consumer makes per round."""
    await AuditConsumer(ChainWriter(pool)).handle_batch(decoded("catalog.events", *envelopes))


def product_event(product_id: str, sequence: int, workflow_id: str = "") -> EventEnvelope:
    return make_envelope(
        producer="catalog",
        aggregate_type="product",
        aggregate_id=product_id,
        sequence=sequence,
        workflow_id=workflow_id,
        run_id=str(uuid.uuid4()) if workflow_id else "",
    )


async def import_run(pool: asyncpg.Pool, product_id: str, sequence: int, size: int) -> None:
    """An import workflow's run: the product's event, then `size - 1` other products'."""
    workflow_id = f"import-{uuid.uuid4().hex[:8]}"
    run = product_event(product_id, sequence, workflow_id)
    others = [product_event(f"other-{uuid.uuid4().hex[:8]}", 1) for _ in range(size - 1)]
    for other in others:
        other.workflow_id, other.run_id = run.workflow_id, run.run_id
    await append(pool, run, *others)


# The head ---------------------------------------------------------------------


async def test_a_rewritten_head_hash_fails_verification_at_the_head_and_is_never_signed(
    settings: Settings, roles: None
) -> None:
    async with scratch_log(settings) as (_, pool):
        for _ in range(3):
            await append(pool, make_envelope(), make_envelope())
        signer = CheckpointSigner(os.urandom(32))
        assert (await verify_chain(pool, signer.public_key)).ok
        # The service's role may update the head (bookkeeping the append keeps).
        await pool.execute("UPDATE audit_chain_head SET hash = $1 WHERE singleton", os.urandom(32))

        answer = await verify_chain(pool, signer.public_key)
        assert (answer.ok, answer.first_bad_sequence) == (False, 6), answer.failure
        assert "chain head's hash" in answer.failure
        below = await verify_chain(pool, signer.public_key, to_sequence=5)
        assert below.ok, below.failure  # the rows themselves are intact
        with pytest.raises(checkpoints.HeadDisagrees):
            await checkpoints.sign_head(pool, signer, "direct")
        with pytest.raises(ApplicationError) as refused:
            await ActivityEnvironment().run(
                AuditActivities(pool, signer).sign_checkpoint, SignCheckpointInput("scheduled")
            )
        assert refused.value.type == CHAIN_BROKEN and "head" in refused.value.message
        assert await pool.fetchval("SELECT count(*) FROM audit_checkpoints") == 0


async def test_the_whole_logs_count_is_not_held_to_the_pools_statement_timeout(
    settings: Settings, roles: None
) -> None:
    # The count grows with the log (one statement): under the pool's 30 s timeout a
    # large log would give every verification no verdict. Here a connection whose
    # every statement times out at once still counts.
    async with scratch_log(settings) as (name, pool):
        await append(pool, make_envelope(), make_envelope(), make_envelope())
        hurried = await asyncpg.connect(scratch_dsn(settings, name), command_timeout=1e-6)
        with pytest.raises(TimeoutError):  # (it closes the connection)
            await hurried.fetchval("SELECT count(*) FROM audit_log")
        conn = await asyncpg.connect(scratch_dsn(settings, name), command_timeout=1e-6)
        try:
            # Three rows for sequences 1..3: nothing repeated, nothing missing.
            assert await count_rows(conn, 1, 3, whole_log=True) == Counted()
        finally:
            await conn.close(timeout=5)


# recorded_at --------------------------------------------------------------------


async def test_a_row_recorded_before_its_predecessor_is_named(
    settings: Settings, roles: None
) -> None:
    async with scratch_log(settings) as (name, pool):
        for _ in range(3):  # three appends, three recording times
            await append(pool, make_envelope())
        signer = CheckpointSigner(os.urandom(32))
        assert (await verify_chain(pool, signer.public_key, from_genesis=True)).ok
        first = await pool.fetchval("SELECT recorded_at FROM audit_log WHERE log_sequence = 1")
        admin = await superuser(settings, name)
        try:
            await admin.execute("SET session_replication_role = replica")
            await admin.execute(
                "UPDATE audit_log SET recorded_at = $1 WHERE log_sequence = 2",
                first - dt.timedelta(milliseconds=1),
            )
        finally:
            await admin.close()

        answer = await verify_chain(pool, signer.public_key, from_genesis=True)
        assert (answer.ok, answer.first_bad_sequence) == (False, 2), answer.failure
        assert "recorded before" in answer.failure


async def test_an_append_after_the_clock_stepped_back_is_recorded_no_earlier_than_the_head(
    settings: Settings, roles: None
) -> None:
    # The head row recorded ten minutes ahead stands for a database clock stepped back
    # since: the next append keeps the order verification requires.
    async with scratch_log(settings) as (name, pool):
        await append(pool, make_envelope())
        ahead = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
        admin = await superuser(settings, name)
        try:
            await admin.execute("SET session_replication_role = replica")
            await admin.execute(
                "UPDATE audit_log SET recorded_at = $1 WHERE log_sequence = 1", ahead
            )
        finally:
            await admin.close()
        await append(pool, make_envelope())

        assert (
            await pool.fetchval("SELECT recorded_at FROM audit_log WHERE log_sequence = 2") == ahead
        )
        signer = CheckpointSigner(os.urandom(32))
        answer = await verify_chain(pool, signer.public_key, from_genesis=True)
        assert answer.ok, answer.failure


@pytest.mark.parametrize("column", ["recorded_at", "occurred_at"])
@pytest.mark.parametrize("planted", ["10000-01-01", "infinity"])
async def test_a_row_with_a_time_python_cannot_hold_is_named_and_never_signed(
    settings: Settings, roles: None, column: str, planted: str
) -> None:
    # PostgreSQL takes the year 10000 and infinity; asyncpg cannot decode the first and
    # decodes the second without a time zone. Read as such, the row made every walk
    # raise (the CLI: "no verdict"), and the scheduled checkpoint retry for good.
    async with scratch_log(settings) as (name, pool):
        for _ in range(3):
            await append(pool, make_envelope())
        admin = await superuser(settings, name)
        try:
            await admin.execute("SET session_replication_role = replica")
            await admin.execute(
                f"UPDATE audit_log SET {column} = '{planted}' WHERE log_sequence = 2"
            )
        finally:
            await admin.close()
        signer = CheckpointSigner(os.urandom(32))

        answer = await verify_chain(pool, signer.public_key, from_genesis=True)
        assert (answer.ok, answer.first_bad_sequence) == (False, 2), answer.failure
        assert column in answer.failure
        with pytest.raises(ApplicationError) as refused:
            await ActivityEnvironment().run(
                AuditActivities(pool, signer).sign_checkpoint, SignCheckpointInput("scheduled")
            )
        assert refused.value.type == CHAIN_BROKEN


@pytest.mark.parametrize(
    "occurred_at",
    [dt.datetime(9999, 12, 31, 12, tzinfo=dt.UTC), dt.datetime(1, 1, 1, 12, tzinfo=dt.UTC)],
    ids=["last-day", "first-day"],
)
async def test_an_event_at_the_edge_of_pythons_times_verifies(
    settings: Settings, roles: None, occurred_at: dt.datetime
) -> None:
    # A "never" sentinel (datetime.max's day) or a zero time (year 1) is an event time
    # intake takes: the walk must read it back, not as a time it cannot hold.
    async with scratch_log(settings) as (_, pool):
        await append(pool, make_envelope(), make_envelope(occurred_at=occurred_at))
        signer = CheckpointSigner(os.urandom(32))
        answer = await verify_chain(pool, signer.public_key, from_genesis=True)
        assert answer.ok, answer.failure


async def test_a_checkpoint_planted_with_a_time_python_cannot_hold_is_a_forged_one(
    settings: Settings, roles: None
) -> None:
    # PostgreSQL takes the year 20000; asyncpg cannot decode it into a datetime. Read
    # as such, the planted row made every verification raise (the CLI: "no verdict")
    # and the scheduled checkpoint fail for good, where it is a forgery to report.
    async with scratch_log(settings) as (_, pool):
        await append(pool, make_envelope(), make_envelope())
        signer = CheckpointSigner(os.urandom(32))
        await checkpoints.sign_head(pool, signer, "direct")
        await pool.execute(
            """INSERT INTO audit_checkpoints
                 (idempotency_key, log_sequence, head_hash, signed_at, key_id, signature)
               VALUES ('planted', 2, $1, '20000-01-01', $2, $3)""",
            os.urandom(32),
            signer.public_key.key_id,
            os.urandom(64),
        )

        answer = await verify_chain(pool, signer.public_key)
        assert (answer.ok, answer.first_bad_sequence) == (False, 2), answer.failure
        assert "no valid signature" in answer.failure


async def test_the_latest_checkpoint_served_and_gone_on_from_is_one_a_trusted_key_signed(
    settings: Settings, roles: None
) -> None:
    # The audit role may insert any checkpoint row. One planted at 2^63-1 was served
    # as the latest for good (verification passing all the while), and the scheduled
    # run went on from it: its bound on the rows one run verifies was gone.
    async with scratch_log(settings) as (_, pool):
        for _ in range(3):
            await append(pool, make_envelope())
        signer = CheckpointSigner(os.urandom(32))
        signed, _ = await checkpoints.sign_head(pool, signer, "direct", at_most=1)
        for key_id, sequence in [(signer.public_key.key_id, 2**63 - 1), ("unknown", 3)]:
            await pool.execute(
                """INSERT INTO audit_checkpoints
                     (idempotency_key, log_sequence, head_hash, signed_at, key_id, signature)
                   VALUES ($1, $2, $3, now(), $4, $5)""",
                f"planted-{sequence}",
                sequence,
                os.urandom(32),
                key_id,
                os.urandom(64),
            )
        audit = AuditApi(
            pool,
            TrustedKeys(signer.public_key),
            await temporal.connect(settings),
            namespace=settings.temporal_namespace,
            ui_base=settings.temporal_ui_url,
        )

        served = (await audit.get_latest_checkpoint(GetLatestCheckpointRequest())).checkpoint
        assert served is not None
        assert (served.log_sequence, served.signature) == (1, signed.signature)
        assert (await verify_chain(pool, signer.public_key)).ok
        run = await ActivityEnvironment().run(
            AuditActivities(pool, signer).sign_checkpoint,
            SignCheckpointInput("scheduled", max_rows=1),
        )
        assert run.log_sequence == 2, "one row past the last signed checkpoint"


# Export -------------------------------------------------------------------------


async def test_an_export_keeps_the_aggregates_own_newest_event_past_its_workflows_cap(
    settings: Settings, roles: None
) -> None:
    # A product in two import runs of 5 rows each, then its price change: with a cap
    # of 5 linked rows, the 11th row in log order is still the product's own.
    product_id = f"p-{uuid.uuid4().hex[:8]}"
    async with scratch_log(settings) as (_, pool):
        await import_run(pool, product_id, 1, size=5)
        await import_run(pool, product_id, 2, size=5)
        await append(pool, product_event(product_id, 3))

        capped = await queries.events_of_trail(
            pool, "product", product_id, own_limit=5, linked_limit=5
        )
        own = [r["log_sequence"] for r in capped.rows if r["aggregate_id"] == product_id]
        assert own == [1, 6, 11]  # the price change, 11th in log order, included
        assert len(capped.rows) == 3 + 5 and capped.truncated
        whole = await queries.events_of_trail(pool, "product", product_id)
        assert len(whole.rows) == 11 and not whole.truncated
        mine = await queries.events_of_trail(
            pool, "product", product_id, own_limit=2, linked_limit=100
        )
        assert mine.truncated, "the product's own events past their cap are left out"


async def test_an_export_response_says_when_it_was_truncated(
    settings: Settings, roles: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    product_id = f"p-{uuid.uuid4().hex[:8]}"
    async with scratch_log(settings) as (_, pool):
        await import_run(pool, product_id, 1, size=3)
        await import_run(pool, product_id, 2, size=3)
        signer = CheckpointSigner(os.urandom(32))
        audit = AuditApi(
            pool,
            TrustedKeys(signer.public_key),
            await temporal.connect(settings),
            namespace=settings.temporal_namespace,
            ui_base=settings.temporal_ui_url,
        )
        request = ExportAggregateRequest(
            aggregate=AggregateRef(aggregate_type="product", aggregate_id=product_id)
        )

        whole = await audit.export_aggregate(request)
        assert (len(whole.events), len(whole.workflows), whole.truncated) == (6, 2, False)
        monkeypatch.setattr(queries, "MAX_LINKED_EVENTS", 3)
        capped = await audit.export_aggregate(request)
        assert (len(capped.events), capped.truncated) == (5, True)
        monkeypatch.setattr(queries, "MAX_LINKED_EVENTS", 100)
        monkeypatch.setattr(api, "MAX_EXPORT_WORKFLOWS", 1)
        fewer_runs = await audit.export_aggregate(request)
        assert (len(fewer_runs.events), len(fewer_runs.workflows)) == (6, 1)
        assert fewer_runs.truncated


async def test_a_tail_cut_off_is_named_though_a_forged_checkpoint_sits_beyond_it(
    settings: Settings, roles: None
) -> None:
    # The audit role may insert any checkpoint row: one at 2^63-1 with the trusted key's
    # id and no signature was the only checkpoint the tail check looked at; it failed
    # its signature, so the real one beyond the head set back went unseen, and the cut
    # log verified (and would have been signed again, shortened).
    async with scratch_log(settings) as (name, pool):
        for _ in range(3):
            await append(pool, make_envelope())
        signer = CheckpointSigner(os.urandom(32))
        await checkpoints.sign_head(pool, signer, "direct")  # a real one at 3
        await pool.execute(
            """INSERT INTO audit_checkpoints
                 (idempotency_key, log_sequence, head_hash, signed_at, key_id, signature)
               VALUES ('planted', $1, $2, now(), $3, $4)""",
            2**63 - 1,
            os.urandom(32),
            signer.public_key.key_id,
            os.urandom(64),
        )
        admin = await superuser(settings, name)
        try:  # the last row deleted, the head set back to the row before it
            await admin.execute("SET session_replication_role = replica")
            await admin.execute("DELETE FROM audit_log WHERE log_sequence = 3")
            await admin.execute("DELETE FROM audit_entries WHERE log_sequence = 3")
            before = await admin.fetchval("SELECT hash FROM audit_log WHERE log_sequence = 2")
            await admin.execute(
                "UPDATE audit_chain_head SET log_sequence = 2, hash = $1 WHERE singleton", before
            )
        finally:
            await admin.close()

        answer = await verify_chain(pool, signer.public_key, from_genesis=True)
        assert (answer.ok, answer.first_bad_sequence) == (False, 3), answer.failure
        assert "a signed checkpoint at 3 is beyond the head at 2" in answer.failure
