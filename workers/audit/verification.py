"""Verification: recompute the hash chain and name the first bad sequence number.

Starts from the last checkpoint whose signature verifies under a trusted key
(the current signing key's or a retired one's, so that a key rotation goes on
from the old key's last checkpoint; or from genesis) and walks the log in
sequence order. A row is bad when its sequence is missing, when its hash is not
SHA-256(previous hash || canonical bytes), when it links to a hash its
predecessor does not have, when a signed checkpoint inside the range disagrees,
when a column that queries use (event id, aggregate, workflow, trace) differs
from its own canonical bytes, when its `recorded_at` is before its predecessor's,
or when a sequence is held by more than one row. A walk that reaches the head also
compares the head's recorded hash with the one it computed (the next append links
to that hash, and the next checkpoint signs it) and names the head's sequence.
A row below sequence 1 fails every verification (the table's CHECK refuses one
since migration 0003).

Since migration 0004 the database refuses a second row for any sequence (and a
second one for an event id) to everyone whose inserts fire triggers. Only a
superuser with triggers off gets one in; the rows up to the end of the range are
counted against the sequences they cover, the retained log below the starting
checkpoint included, so such a row is named wherever it lies.

Every failed verification (the API's, the CLI's, the one before each scheduled
checkpoint) is logged as an error and counted in `agora_audit_verification_failures`,
which pages (deploy/prometheus/rules/agora.yml, AuditChainVerificationFailed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from opentelemetry import metrics

from workers.audit import checkpoints
from workers.audit.chain import GENESIS_HASH
from workers.audit.checkpoints import StoredCheckpoint
from workers.audit.envelopes import canonical_columns
from workers.audit.signing import PublicKey, TrustedKeys

CHUNK = 5000
# The whole log's count is one statement that grows with the log (about 0.13 s per
# 200,000 rows): the pool's 30 s command_timeout would end every verification of a
# log past some tens of millions of rows with no verdict. Its statements get an hour;
# an API call is still bounded by its gRPC deadline, which cancels the handler.
COUNT_TIMEOUT_S = 3600.0
# The columns a walk reads; a time Python cannot hold, which the audit role could
# plant, is read as NULL (checkpoints.readable_time), a row to name. (Sorting by
# `audit_log.recorded_at` is by the stored time, not this.)
_WALKED = (
    "log_sequence, prev_hash, hash, canonical, event_id, event_type, payload_type,"
    " aggregate_type, aggregate_id, aggregate_sequence, producer, workflow_id, run_id,"
    f" trace_id, {checkpoints.readable_time('occurred_at')},"
    f" {checkpoints.readable_time('recorded_at')}"
)
# Told after each chunk a walk checked: (the sequence reached, rows checked, the last sequence).
Progress = Callable[[int, int, int], None]
log = logging.getLogger(__name__)
_failures = metrics.get_meter("agora.audit").create_counter(
    "agora_audit_verification_failures",
    description="verifications of the hash chain that found it broken (tampering or corruption)",
)


def count_failures_from_zero() -> None:
    """Export the failure counter at 0 from the start: a series born at 1 hides its
    first failure from increase(), and with it from the page."""
    _failures.add(0)


@dataclass(frozen=True)
class Verification:
    ok: bool
    first_sequence: int
    last_sequence: int
    records_checked: int
    first_bad_sequence: int = 0
    failure: str = ""
    start_checkpoint: StoredCheckpoint | None = None
    checkpoints_checked: int = 0
    head_hash: bytes = b""


def _column_mismatch(row: asyncpg.Record) -> str:
    """Which indexed column disagrees with the canonical envelope ("" when none)."""
    try:
        derived = canonical_columns(bytes(row["canonical"]))
    except Exception:
        return "canonical bytes are not an envelope"
    for column, value in derived.items():
        stored = row[column]
        if column == "event_id":
            stored = str(stored)
        if stored is None or stored != value:  # None: a time Python cannot hold (_WALKED)
            return f"column {column} differs from the canonical event"
    return ""


async def verify_chain(
    pool: asyncpg.Pool,
    trusted: PublicKey | TrustedKeys,
    *,
    from_genesis: bool = False,
    to_sequence: int = 0,
    whole_log: bool = True,
    progress: Progress | None = None,
) -> Verification:
    """Verify the chain up to `to_sequence` (0: the head) from the last checkpoint a
    trusted key signed (a single key: that key's alone), or from genesis.

    `whole_log`: count every retained row (a row planted below the starting
    checkpoint is outside the walk); the scheduled checkpoint counts only the range
    it walks, since a count of the whole log grows without bound and must fit its
    activity's 30 s (the on-demand checks, API and CLI, count it all).

    `progress`: told after each chunk of the walk (a walk from genesis takes long)."""
    keys = TrustedKeys.of(trusted)
    result = await _verify(pool, keys, from_genesis, to_sequence, whole_log, progress)
    if not result.ok:
        _failures.add(1)
        log.error(
            "audit chain verification failed",
            extra={"first_bad_sequence": result.first_bad_sequence, "failure": result.failure},
        )
    return result


async def _verify(
    pool: asyncpg.Pool,
    keys: TrustedKeys,
    from_genesis: bool,
    to_sequence: int,
    whole_log: bool,
    progress: Progress | None,
) -> Verification:
    # One snapshot for the head, the rows beyond it, the checkpoints and the walk:
    # appends and checkpoints committed meanwhile must not read as a cut-off tail.
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        head_row = await conn.fetchrow("SELECT log_sequence, hash FROM audit_chain_head")
        head, head_hash = int(head_row["log_sequence"]), bytes(head_row["hash"])
        last = min(to_sequence, head) if to_sequence > 0 else head
        start: StoredCheckpoint | None = None
        if not from_genesis:
            # The newest checkpoint of any trusted key: after a rotation the retired
            # key's last one is where the new key goes on (the rows before it may be
            # detached by then). Checkpoints of an untrusted key are neither a start
            # nor a failure; one that claims a trusted key and does not verify under
            # it is forged.
            start = await checkpoints.latest(conn, at_most=last, key_ids=keys.key_ids)

        def refused(first_bad_sequence: int, failure: str) -> Verification:
            """Failed before the walk: no record checked."""
            return Verification(
                ok=False,
                first_sequence=start.log_sequence if start else 0,
                last_sequence=last,
                records_checked=0,
                first_bad_sequence=first_bad_sequence,
                failure=failure,
                start_checkpoint=start,
            )

        if start is not None and not start.verifies_under(keys):
            return refused(
                max(start.log_sequence, 1),
                f"checkpoint at {start.log_sequence} has no valid signature by key {start.key_id}",
            )
        truncated = await beyond_head(conn, keys, head)
        if truncated:
            return refused(head + 1, truncated)
        outside = await before_first(conn)
        if outside:
            return refused(1, outside)
        first = max(start.log_sequence, 1) if start else 1
        counted = await count_rows(conn, first, last, whole_log)
        if counted.missing:
            return refused(
                counted.missing,
                f"sequence {counted.missing} is missing from the log"
                f" (below the starting checkpoint at {first})",
            )
        anchors = {
            c.log_sequence: c
            for c in await checkpoints.in_range(conn, start.log_sequence if start else 0, last)
            if c.verifies_under(keys)
        }
        walked = await _walk(conn, start, anchors, last, counted.repeated, progress)
        if walked.ok and last == head and walked.head_hash != head_hash:
            return _head_disagrees(walked, head)
        return walked


def _head_disagrees(walked: Verification, head: int) -> Verification:
    """The recorded head's hash is not the one the walk computed for its row: the next
    append would link to it, and the next checkpoint would sign it."""
    return Verification(
        ok=False,
        first_sequence=walked.first_sequence,
        last_sequence=walked.last_sequence,
        records_checked=walked.records_checked,
        first_bad_sequence=max(head, 1),
        failure=f"the chain head's hash disagrees with the hash computed for its sequence {head}",
        start_checkpoint=walked.start_checkpoint,
        checkpoints_checked=walked.checkpoints_checked,
        head_hash=walked.head_hash,
    )


async def beyond_head(conn: asyncpg.Connection, trusted: PublicKey | TrustedKeys, head: int) -> str:
    """Why the log once went past its recorded head ("" when nothing says so): a tail
    cut off with the head set back leaves rows or a signed checkpoint beyond it."""
    keys = TrustedKeys.of(trusted)
    rows_beyond = await conn.fetchval(
        "SELECT max(log_sequence) FROM audit_log WHERE log_sequence > $1", head
    )
    if rows_beyond is not None:
        return f"the log holds rows up to {rows_beyond}, beyond its head at {head}"
    # The newest one a trusted key signed: the audit role may insert any row, and one
    # planted at 2^63-1 with a trusted key id and no signature, taken as the newest,
    # hid the real checkpoint beyond a head set back. (Run in _verify's transaction.)
    newest = await checkpoints.latest_verified(conn, keys)
    if newest is not None and newest.log_sequence > head:
        return (
            f"a signed checkpoint at {newest.log_sequence} is beyond the head at {head}:"
            " the log's tail was cut off"
        )
    return ""


async def before_first(conn: asyncpg.Connection) -> str:
    """Why the log holds rows below sequence 1 ("" when it does not): outside every
    walk, such a row would still come first in its aggregate's queries and exports."""
    below = await conn.fetchrow(
        "SELECT count(*) AS n, min(log_sequence) AS lowest FROM audit_log WHERE log_sequence < 1"
    )
    if not below["n"]:
        return ""
    if below["n"] == 1:
        return f"the log holds a row at sequence {below['lowest']}, before its first (1)"
    return (
        f"the log holds {below['n']} rows before its first sequence (1),"
        f" down to sequence {below['lowest']}"
    )


def _appears(sequence: int, times: int) -> str:
    return f"sequence {sequence} appears {'twice' if times == 2 else f'{times} times'} in the log"


@dataclass(frozen=True)
class Counted:
    """What counting the log's rows found: the lowest sequence held by more than one
    row and by how many rows, or the lowest one missing below the walk's start."""

    repeated: tuple[int, int] | None = None
    missing: int = 0


async def count_rows(
    conn: asyncpg.Connection, first: int, last: int, whole_log: bool = True
) -> Counted:
    """Count the rows up to `last` against the sequences they should cover.

    The retained log is every sequence from its lowest row (retention detaches the
    oldest months whole) to `last`, one row each. Counting it reads the primary-key
    index of each partition and nothing more; the whole retained log is counted, not
    only the range the walk verifies, because a row planted below the starting
    checkpoint is outside every walk from it. Only a wrong count looks further: a
    count above one row per sequence for the lowest repeated sequence, one short of
    it for the lowest gap below `first` (the walk names a missing one from there on).
    Without `whole_log`, only `first`..`last` is counted (the scheduled checkpoint).
    """
    floor = 1 if whole_log else first  # without the whole log: only what the walk covers
    # The whole log's statements get COUNT_TIMEOUT_S; a checkpoint's range is bounded
    # by its rows (CHECKPOINT_MAX_ROWS) and keeps the pool's timeout.
    timeout = COUNT_TIMEOUT_S if whole_log else None
    counted = await conn.fetchrow(
        "SELECT count(*) AS n, min(log_sequence) AS lowest FROM audit_log"
        " WHERE log_sequence BETWEEN $2 AND $1",
        last,
        floor,
        timeout=timeout,
    )
    rows = int(counted["n"])
    if not rows:
        return Counted()
    lowest = int(counted["lowest"])
    covered = last - lowest + 1
    if rows > covered:
        repeated = await conn.fetchrow(
            """SELECT log_sequence, count(*) AS times FROM audit_log
               WHERE log_sequence BETWEEN $2 AND $1
               GROUP BY log_sequence HAVING count(*) > 1 ORDER BY log_sequence LIMIT 1""",
            last,
            floor,
            timeout=timeout,
        )
        return Counted(repeated=(int(repeated["log_sequence"]), int(repeated["times"])))
    if rows < covered and lowest < first:
        gap = await conn.fetchval(
            """SELECT s + 1 FROM (
                   SELECT log_sequence AS s, lead(log_sequence) OVER (ORDER BY log_sequence) AS n
                   FROM audit_log WHERE log_sequence <= $1
               ) AS pairs WHERE n > s + 1 ORDER BY s LIMIT 1""",
            first,
            timeout=timeout,
        )
        if gap is not None and gap < first:
            return Counted(missing=int(gap))
    return Counted()


async def _walk(
    conn: asyncpg.Connection,
    start: StoredCheckpoint | None,
    anchors: dict[int, StoredCheckpoint],
    last: int,
    repeated: tuple[int, int] | None,
    progress: Progress | None,
) -> Verification:
    # From a checkpoint at N, row N itself is recomputed and must give the signed hash.
    first = max(start.log_sequence, 1) if start else 1
    # A repeated sequence is named unless the walk finds something wrong before it.
    end = repeated[0] - 1 if repeated else last
    expected_seq = first
    prev: bytes | None = None if start and start.log_sequence > 0 else GENESIS_HASH
    prev_self_consistent = True
    prev_recorded_at: dt.datetime | None = None
    checked = 0
    used_anchors = 0

    def fail(sequence: int, why: str) -> Verification:
        return Verification(
            False, first, last, checked, sequence, why, start, used_anchors, prev or b""
        )

    if 0 in anchors and anchors[0].head_hash != GENESIS_HASH:
        return fail(1, "checkpoint at 0 does not sign the genesis hash")
    # Chunks go on from the last row's whole key, so a second row with the sequence
    # that ends a chunk starts the next one instead of being skipped.
    after: tuple[int, object] | None = None
    while expected_seq <= end:
        if after is None:
            rows = await conn.fetch(
                f"""SELECT {_WALKED} FROM audit_log WHERE log_sequence >= $1 AND log_sequence <= $2
                    ORDER BY log_sequence, audit_log.recorded_at LIMIT $3""",
                expected_seq,
                end,
                CHUNK,
            )
        else:
            rows = await conn.fetch(
                f"""SELECT {_WALKED} FROM audit_log
                    WHERE (log_sequence, recorded_at) > ($1, $2) AND log_sequence <= $3
                    ORDER BY log_sequence, audit_log.recorded_at LIMIT $4""",
                *after,
                end,
                CHUNK,
            )
        if not rows:
            return fail(expected_seq, f"sequence {expected_seq} is missing from the log")
        # (A last row read with no recorded_at fails below: this key is not used then.)
        after = (int(rows[-1]["log_sequence"]), rows[-1]["recorded_at"])
        for row in rows:
            sequence = int(row["log_sequence"])
            if sequence < expected_seq:  # rows come in key order: the one just walked
                return fail(sequence, f"sequence {sequence} appears more than once in the log")
            if sequence != expected_seq:
                return fail(expected_seq, f"sequence {expected_seq} is missing from the log")
            stored_prev, stored_hash = bytes(row["prev_hash"]), bytes(row["hash"])
            canonical = bytes(row["canonical"])
            self_consistent = hashlib.sha256(stored_prev + canonical).digest() == stored_hash
            if prev is None:
                prev = stored_prev  # anchored below by the checkpoint's signed hash
            if stored_prev != prev:
                if self_consistent and prev_self_consistent and sequence > first:
                    # This row still links to what its predecessor's hash once was:
                    # the predecessor was rewritten along with its own hash.
                    return fail(
                        sequence - 1,
                        f"row {sequence - 1} was rewritten (its"
                        " successor links to a different hash)",
                    )
                return fail(sequence, "prev_hash does not match the previous row's hash")
            digest = hashlib.sha256(prev + canonical).digest()
            if digest != stored_hash:
                return fail(sequence, "hash does not match the row's canonical bytes")
            mismatch = _column_mismatch(row)
            if mismatch:
                return fail(sequence, mismatch)
            # Appends are serialized by the head's lock and stamp the time they won it.
            recorded_at = row["recorded_at"]
            if recorded_at is None:
                return fail(sequence, f"row {sequence} has a recorded_at no append stamps")
            if prev_recorded_at is not None and recorded_at < prev_recorded_at:
                return fail(sequence, f"row {sequence} is recorded before the row preceding it")
            anchor = anchors.get(sequence)
            if start is not None and sequence == start.log_sequence:
                anchor = start
            if anchor is not None:
                used_anchors += 1
                if anchor.head_hash != digest:
                    return fail(sequence, f"the signed checkpoint at {sequence} disagrees")
            prev = digest
            prev_self_consistent = self_consistent
            prev_recorded_at = recorded_at
            checked += 1
            expected_seq += 1
        if progress is not None:
            progress(expected_seq - 1, checked, last)
    if after is not None and await conn.fetchval(
        "SELECT 1 FROM audit_log WHERE (log_sequence, recorded_at) > ($1, $2)"
        " AND log_sequence <= $3 LIMIT 1",
        *after,
        end,
    ):
        # A second row of the last sequence walked, after it in key order.
        return fail(after[0], f"sequence {after[0]} appears more than once in the log")
    if repeated:
        return fail(repeated[0], _appears(*repeated))
    return Verification(True, first, last, checked, 0, "", start, used_anchors, prev or b"")
