"""Signed checkpoints of the chain head: stored append-only, one per idempotency key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from workers.audit.chain import GENESIS_HASH
from workers.audit.signing import CheckpointSigner, PublicKey, TrustedKeys, statement


@dataclass(frozen=True)
class StoredCheckpoint:
    log_sequence: int
    head_hash: bytes
    signed_at: dt.datetime
    key_id: str
    signature: bytes

    def verifies_with(self, key: PublicKey) -> bool:
        return self.key_id == key.key_id and key.verifies(
            self.signature, statement(self.log_sequence, self.head_hash, self.signed_at)
        )

    def verifies_under(self, keys: TrustedKeys) -> bool:
        """Signed by one of `keys`: the one its key_id names."""
        key = keys.get(self.key_id)
        return key is not None and self.verifies_with(key)


_COLUMNS = "log_sequence, head_hash, signed_at, key_id, signature"


def readable_time(column: str) -> str:
    """`column` selected as NULL when it holds a time Python cannot (a year past 9999,
    infinity): PostgreSQL holds them, and asyncpg's decode of a row the audit role
    planted with one would raise and end the read, where the row is one to report."""
    return (
        f"CASE WHEN {column} >= '0001-01-01 00:00:00+00' AND {column} < '10000-01-01 00:00:00+00'"
        f" THEN {column} END AS {column}"
    )


# Read back: a planted checkpoint with such a time fails verification as a forged one.
_SELECTED = f"log_sequence, head_hash, {readable_time('signed_at')}, key_id, signature"
# Stands for a time Python cannot hold: no checkpoint was signed at it, so a row read
# with it never verifies.
UNREADABLE_TIME = dt.datetime.min.replace(tzinfo=dt.UTC)


def _from_row(row: asyncpg.Record) -> StoredCheckpoint:
    return StoredCheckpoint(
        int(row["log_sequence"]),
        bytes(row["head_hash"]),
        row["signed_at"] if row["signed_at"] is not None else UNREADABLE_TIME,
        row["key_id"],
        bytes(row["signature"]),
    )


class HeadDisagrees(Exception):
    """The chain head records a hash its row does not have (a tampered head)."""


async def _hash_of_row(conn: asyncpg.Connection, sequence: int) -> bytes:
    if sequence == 0:
        return GENESIS_HASH
    stored = await conn.fetchval("SELECT hash FROM audit_log WHERE log_sequence = $1", sequence)
    if stored is None:
        raise HeadDisagrees(f"the log holds no row {sequence} to sign: nothing signed")
    return bytes(stored)


async def sign_head(
    pool: asyncpg.Pool, signer: CheckpointSigner, idempotency_key: str, at_most: int | None = None
) -> tuple[StoredCheckpoint, bool]:
    """Sign the current head once per key; returns the checkpoint and whether it is new.

    The head is read under a share lock: an append in flight finishes first, so
    the signed (sequence, hash) pair is one the chain really had. `at_most`: sign
    the row at that sequence instead when the head has moved past it (the one a
    verification just checked, so no unchecked row is signed). What is signed is
    the hash the log's row holds (the one verification recomputed), never the
    head's own copy of it: a head that disagrees with its row is refused.
    """
    async with pool.acquire() as conn, conn.transaction():
        existing = await conn.fetchrow(
            f"SELECT {_SELECTED} FROM audit_checkpoints WHERE idempotency_key = $1",
            idempotency_key,
        )
        if existing is not None:
            return _from_row(existing), False
        head = await conn.fetchrow(
            "SELECT log_sequence, hash FROM audit_chain_head WHERE singleton FOR SHARE"
        )
        sequence = int(head["log_sequence"])
        if at_most is not None:
            sequence = min(sequence, at_most)
        head_hash = await _hash_of_row(conn, sequence)
        if sequence == head["log_sequence"] and bytes(head["hash"]) != head_hash:
            raise HeadDisagrees(
                f"the chain head's hash is not the hash of row {sequence}: nothing signed"
            )
        # Microseconds: what timestamptz keeps, so the signed statement round-trips.
        signed_at = dt.datetime.now(dt.UTC)
        checkpoint = StoredCheckpoint(
            sequence,
            head_hash,
            signed_at,
            signer.public_key.key_id,
            signer.sign(sequence, head_hash, signed_at),
        )
        await conn.execute(
            f"""INSERT INTO audit_checkpoints (idempotency_key, {_COLUMNS})
                VALUES ($1, $2, $3, $4, $5, $6)""",
            idempotency_key,
            checkpoint.log_sequence,
            checkpoint.head_hash,
            checkpoint.signed_at,
            checkpoint.key_id,
            checkpoint.signature,
        )
        return checkpoint, True


async def latest(
    conn: asyncpg.Connection,
    *,
    at_most: int | None = None,
    key_ids: Sequence[str] | None = None,
) -> StoredCheckpoint | None:
    """The newest checkpoint (at or below `at_most`; carrying one of `key_ids`, if given)."""
    row = await conn.fetchrow(
        f"""SELECT {_SELECTED} FROM audit_checkpoints
            WHERE ($1::bigint IS NULL OR log_sequence <= $1)
              AND ($2::text[] IS NULL OR key_id = ANY($2::text[]))
            ORDER BY log_sequence DESC, id DESC LIMIT 1""",
        at_most,
        None if key_ids is None else list(key_ids),
    )
    return _from_row(row) if row is not None else None


async def latest_verified(
    conn: asyncpg.Connection, keys: TrustedKeys, *, at_most: int | None = None
) -> StoredCheckpoint | None:
    """The newest checkpoint (at or below `at_most`) that one of `keys` signed. The
    audit role may insert any row: one claiming a trusted key without its signature
    is passed over, not served (at 2^63-1 it would be the newest for good). Run in a
    transaction (a cursor's)."""
    async for row in conn.cursor(
        f"""SELECT {_SELECTED} FROM audit_checkpoints
            WHERE ($1::bigint IS NULL OR log_sequence <= $1) AND key_id = ANY($2::text[])
            ORDER BY log_sequence DESC, id DESC""",
        at_most,
        keys.key_ids,
    ):
        checkpoint = _from_row(row)
        if checkpoint.verifies_under(keys):
            return checkpoint
    return None


async def in_range(conn: asyncpg.Connection, first: int, last: int) -> list[StoredCheckpoint]:
    rows = await conn.fetch(
        f"""SELECT {_SELECTED} FROM audit_checkpoints
            WHERE log_sequence BETWEEN $1 AND $2 ORDER BY log_sequence, id""",
        first,
        last,
    )
    return [_from_row(row) for row in rows]
