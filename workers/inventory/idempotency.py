"""The idempotency table: the first result of every keyed operation.

An operation opens its transaction, calls `claim` (which serializes callers of
the same key with a transaction-scoped advisory lock, then looks the key up),
and, if nothing was stored, acts and calls `remember` in the same transaction.
So a retried call, even one racing the first, returns the first result: the
effect and its record commit together or not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, TypeVar

import asyncpg
from temporalio.converter import value_to_type

from agora.db import lock_for_transaction
from workers.inventory import errors

T = TypeVar("T")


def fingerprint(*request: Any) -> str:
    """A digest of the request, to tell a retry from a different request under the same key."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


async def claim(
    conn: asyncpg.Connection, operation: str, key: str, digest: str, *, lock: str = ""
) -> dict[str, Any] | None:
    """Lock the key for this transaction and return its stored result, if any.

    `lock` names what to serialize on when several operations touch one thing
    (reserve, release and commit of one reservation share its id).
    """
    await lock_for_transaction(conn, lock or f"{operation}:{key}")
    row = await conn.fetchrow(
        "SELECT fingerprint, result FROM idempotency_keys WHERE operation = $1 AND key = $2",
        operation,
        key,
    )
    if row is None:
        return None
    if row["fingerprint"] != digest:
        raise errors.IdempotencyKeyReused(
            f"{operation} key {key!r} was used for a different request"
        )
    stored: dict[str, Any] = json.loads(row["result"])
    return stored


async def remember(
    conn: asyncpg.Connection, operation: str, key: str, digest: str, result: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO idempotency_keys (operation, key, fingerprint, result)"
        " VALUES ($1, $2, $3, $4::jsonb)",
        operation,
        key,
        digest,
        json.dumps(result),
    )


# A key's record is needed while its operation can still be retried: far less than
# this (a saga's steps, Temporal's retention). Older ones are pruned by the sweep.
RETENTION_DAYS = 30


async def prune(conn: asyncpg.Connection, limit: int) -> int:
    """Delete up to `limit` records older than RETENTION_DAYS, oldest first; how many."""
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE (operation, key) IN (SELECT operation, key"
        " FROM idempotency_keys WHERE created_at < now() - make_interval(days => $1)"
        " ORDER BY created_at LIMIT $2)",
        RETENTION_DAYS,
        limit,
    )
    return int(status.split()[-1])


def outcome(value: Any) -> dict[str, Any]:
    """A result dataclass as the JSON document stored for its key."""
    return {"ok": dataclasses.asdict(value)}


def replay(stored: dict[str, Any], result_type: type[T]) -> T:
    """The stored first result again: the value, or the same domain error re-raised."""
    if "ok" in stored:
        value: T = value_to_type(result_type, stored["ok"])
        return value
    rejection = stored["error"]
    if rejection["type"] == errors.OutOfStock.failure_type:
        raise errors.OutOfStock([errors.Shortage(**s) for s in rejection["shortages"]])
    if rejection["type"] == errors.UnknownSku.failure_type:
        raise errors.UnknownSku(rejection["skus"])
    raise errors.InventoryError(rejection.get("detail", "rejected"))


def rejection(error: Exception) -> dict[str, Any]:
    """A business rejection as the JSON document stored for its key."""
    if isinstance(error, errors.OutOfStock):
        return {"error": {"type": error.failure_type, "shortages": error.failure_details()}}
    if isinstance(error, errors.UnknownSku):
        return {"error": {"type": error.failure_type, "skus": error.skus}}
    raise TypeError(f"not a stored rejection: {error!r}")
