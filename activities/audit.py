"""Audit's activities: the steps of the scheduled checkpoint workflow.

Each is idempotent: a checkpoint is signed once per key the workflow passes (its
own workflow id + run id), and partitions are created only when missing.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workers.audit import checkpoints
from workers.audit.signing import CheckpointSigner, PublicKey, TrustedKeys
from workers.audit.verification import verify_chain

# Monthly partitions made ahead of time, so an insert never lands in the default one.
PARTITION_MONTHS_AHEAD = 2
# How long making a partition waits for its lock on the log. It takes ACCESS EXCLUSIVE,
# and while it waits behind a reader (a long verification) every append waits behind
# it: all intake would stop. It gives up instead, and the activity is retried.
PARTITION_LOCK_TIMEOUT = "1s"
# The transaction-scoped advisory lock that makes partitions one maker at a time.
PARTITIONS_LOCK_KEY = zlib.crc32(b"agora-audit-partitions")
# The failure type of a checkpoint refused because verification found the chain broken.
CHAIN_BROKEN = "AuditChainBroken"


# The most rows one checkpoint run verifies (and so vouches for). After an outage the
# log may have grown by more than one 30 s attempt can verify: each run then signs
# the row it verified up to, the next one goes on from there, and the checkpoints
# catch up with the head run by run instead of every attempt timing out for good.
# It also bounds how fast checkpoints can follow the log: at the default 300 s
# interval, 300,000 rows are 1,000 rows/s, four times what 30 orders/s append (about
# 8 events each); 50,000 (167 rows/s) fell behind at that load for good. About 3 s of
# verification at 100,000 rows/s (docs/audit.md), 10 s on a loaded host.
CHECKPOINT_MAX_ROWS = 300_000


@dataclass
class SignCheckpointInput:
    idempotency_key: str
    max_rows: int = CHECKPOINT_MAX_ROWS


@dataclass
class SignedCheckpoint:
    log_sequence: int
    head_hash_hex: str
    signed_at: str  # ISO 8601
    key_id: str
    created: bool


@dataclass
class PartitionsEnsured:
    created: int


async def ensure_partitions(pool: asyncpg.Pool) -> int:
    """Make the months' partitions that are missing; how many it made. Gives up with
    asyncpg.LockNotAvailableError after PARTITION_LOCK_TIMEOUT rather than queue every
    append behind it (the scheduled activity is retried, the start-up step too)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'")
        return await ensure_partitions_in(conn)


async def ensure_partitions_in(conn: asyncpg.Connection) -> int:
    """The partitions made in the caller's transaction, one maker at a time: two (pods
    starting together, or one beside the scheduled run) both found a month missing,
    and the second's CREATE failed `duplicate_table` once the first committed, which
    at start-up is no retried error: the process exited and was restarted."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITIONS_LOCK_KEY)
    made = await conn.fetchval("SELECT audit_ensure_partitions($1)", PARTITION_MONTHS_AHEAD)
    return int(made)


class AuditActivities:
    """The checkpoint steps. `retired_keys`: the public keys of signing keys rotated out,
    whose last checkpoint the first runs under the new key go on from."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        signer: CheckpointSigner,
        retired_keys: Sequence[PublicKey] = (),
    ):
        self._pool = pool
        self._signer = signer
        self._keys = TrustedKeys(signer.public_key, tuple(retired_keys))

    @activity.defn(name="audit.sign_checkpoint")
    async def sign_checkpoint(self, data: SignCheckpointInput) -> SignedCheckpoint:
        """Verify the chain since the last checkpoint (at most `max_rows` of it), then
        sign what was verified: a checkpoint over a broken chain would vouch for the
        break, and one past what was verified would vouch for unchecked rows."""
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            since = await checkpoints.latest_verified(conn, self._keys)
        start = since.log_sequence if since is not None else 0
        verified = await verify_chain(
            self._pool, self._keys, to_sequence=start + max(data.max_rows, 1), whole_log=False
        )
        if not verified.ok:
            raise ApplicationError(
                f"the chain is broken at {verified.first_bad_sequence}: {verified.failure}",
                type=CHAIN_BROKEN,
                non_retryable=True,
            )
        checkpoint, created = await checkpoints.sign_head(
            self._pool, self._signer, data.idempotency_key, at_most=verified.last_sequence
        )
        return SignedCheckpoint(
            log_sequence=checkpoint.log_sequence,
            head_hash_hex=checkpoint.head_hash.hex(),
            signed_at=checkpoint.signed_at.astimezone(dt.UTC).isoformat(),
            key_id=checkpoint.key_id,
            created=created,
        )

    @activity.defn(name="audit.ensure_partitions")
    async def ensure_partitions(self) -> PartitionsEnsured:
        return PartitionsEnsured(created=await ensure_partitions(self._pool))
