"""Reservations: hold stock for an order, then give it back (release) or take it (commit).

Each function runs one transaction on the caller's connection: the stock rows,
the reservation, its outbox event and the idempotency record change together.
Rows are locked in sku order (`merge_lines` sorts), so two multi-line
reservations can never deadlock; the availability test is part of each
UPDATE's WHERE clause, which PostgreSQL re-checks on the latest row version
after waiting for a concurrent writer, so concurrent reservations cannot
oversell (and the table's CHECKs would refuse it anyway).

Reserve, release and commit of one reservation serialize on one advisory lock
named for its id, so a compensation racing a slow reserve sees a clean state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from agora import outbox
from contracts.agora.common.v1 import LineItem
from contracts.agora.inventory.v1 import (
    ReleaseReason,
    ReservationCommitted,
    ReservationExpired,
    ReservationReleased,
    StockReserved,
)
from workers.inventory import idempotency
from workers.inventory.errors import (
    InvalidInventoryRequest,
    OutOfStock,
    ReservationNotFound,
    ReservationNotHeld,
    Shortage,
    UnknownSku,
)
from workers.inventory.model import (
    COMMITTED,
    EXPIRED,
    HELD,
    MAX_TTL_SECONDS,
    REASON_COMPENSATION,
    REASON_EXPIRED,
    REASON_ORDER_CANCELLED,
    RELEASE_REASONS,
    RELEASED,
    CommitResult,
    ReleaseResult,
    ReserveResult,
    StockLine,
    StockSnapshot,
    check_key,
    merge_lines,
)

TOPIC = "inventory.events"
PRODUCER = "inventory"
AGGREGATE = "reservation"

_PROTO_REASON = {
    REASON_COMPENSATION: ReleaseReason.COMPENSATION,
    REASON_ORDER_CANCELLED: ReleaseReason.ORDER_CANCELLED,
    REASON_EXPIRED: ReleaseReason.EXPIRED,
}


def _lock(reservation_id: str) -> str:
    return f"reservation:{reservation_id}"


def _items(lines: Sequence[StockLine]) -> list[LineItem]:
    return [LineItem(sku=line.sku, quantity=line.quantity) for line in lines]


async def reserve(
    conn: asyncpg.Connection,
    reservation_id: str,
    lines: list[StockLine],
    ttl_seconds: int,
    *,
    order_id: str = "",
    workflow: outbox.WorkflowRef | None = None,
) -> ReserveResult:
    """Hold every line or none; raises OutOfStock / UnknownSku (also on a retry of a rejection)."""
    check_key(reservation_id, "reservation_id")
    if order_id:
        check_key(order_id, "order_id")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidInventoryRequest(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}")
    merged = merge_lines(lines)
    digest = idempotency.fingerprint(order_id, merged)
    async with conn.transaction():
        stored = await idempotency.claim(
            conn, "reserve", reservation_id, digest, lock=_lock(reservation_id)
        )
        if stored is None:
            stored = await _first_reserve(
                conn, reservation_id, merged, ttl_seconds, order_id, workflow
            )
            await idempotency.remember(conn, "reserve", reservation_id, digest, stored)
    # Outside the transaction: a rejection is raised only after its record committed.
    return idempotency.replay(stored, ReserveResult)


async def _first_reserve(
    conn: asyncpg.Connection,
    reservation_id: str,
    lines: list[StockLine],
    ttl_seconds: int,
    order_id: str,
    workflow: outbox.WorkflowRef | None,
) -> dict[str, object]:
    settled = await conn.fetchrow(
        "SELECT status, expires_at FROM reservations WHERE reservation_id = $1", reservation_id
    )
    if settled is not None:
        # A release got here first (a tombstone): hold nothing.
        return idempotency.outcome(
            ReserveResult(reservation_id, settled["status"], settled["expires_at"].isoformat())
        )
    try:
        async with conn.transaction():  # a savepoint: a rejection undoes the lines already held
            result = await _hold(conn, reservation_id, lines, ttl_seconds, order_id, workflow)
    except (OutOfStock, UnknownSku) as rejected:
        return idempotency.rejection(rejected)
    return idempotency.outcome(result)


async def _hold(
    conn: asyncpg.Connection,
    reservation_id: str,
    lines: list[StockLine],
    ttl_seconds: int,
    order_id: str,
    workflow: outbox.WorkflowRef | None,
) -> ReserveResult:
    after: list[StockSnapshot] = []
    shortages: list[Shortage] = []
    unknown: list[str] = []
    for line in lines:
        # Once a line is refused the reservation is: the lines after it are only read
        # (every short one is reported), not updated and locked. Held to the end of
        # the rejection's savepoint for nothing, those locks made every reserve of
        # those skus wait (an order of many lines whose first is sold out).
        refused = bool(shortages or unknown)
        if not refused:
            row = await conn.fetchrow(
                """
                UPDATE stock SET reserved = reserved + $2, version = version + 1,
                    updated_at = now()
                WHERE sku = $1 AND on_hand - reserved >= $2
                RETURNING sku, on_hand, reserved, version, updated_at
                """,
                line.sku,
                line.quantity,
            )
            if row is not None:
                after.append(StockSnapshot.from_row(row))
                continue
        available = await conn.fetchval(
            "SELECT on_hand - reserved FROM stock WHERE sku = $1", line.sku
        )
        if available is None:
            unknown.append(line.sku)
        elif not refused:
            shortages.append(Shortage.after_refusal(line.sku, line.quantity, available))
        elif available < line.quantity:
            shortages.append(Shortage(line.sku, line.quantity, available))
    if unknown:
        raise UnknownSku(unknown)
    if shortages:
        raise OutOfStock(shortages)

    # From now, not from the transaction's start (now()): a reserve that waited on a
    # hot row gets its whole TTL.
    expires_at = await conn.fetchval(
        "INSERT INTO reservations (reservation_id, order_id, status, expires_at)"
        " VALUES ($1, $2, 'held', clock_timestamp() + make_interval(secs => $3))"
        " RETURNING expires_at",
        reservation_id,
        order_id,
        float(ttl_seconds),
    )
    await conn.executemany(
        "INSERT INTO reservation_lines (reservation_id, sku, quantity) VALUES ($1, $2, $3)",
        [(reservation_id, line.sku, line.quantity) for line in lines],
    )
    await outbox.append(
        conn,
        producer=PRODUCER,
        topic=TOPIC,
        aggregate_type=AGGREGATE,
        aggregate_id=reservation_id,
        payload=StockReserved(
            reservation_id=reservation_id,
            order_id=order_id,
            items=_items(lines),
            expires_at=expires_at,
            stock_after=[s.to_proto() for s in after],
        ),
        workflow=workflow,
    )
    return ReserveResult(reservation_id, HELD, expires_at.isoformat(), lines, after)


async def release(
    conn: asyncpg.Connection,
    reservation_id: str,
    reason: str,
    *,
    workflow: outbox.WorkflowRef | None = None,
) -> ReleaseResult:
    """Give a held reservation's stock back; a no-op (released=False) once it is settled.

    Releasing an id that was never reserved leaves a tombstone, so a reserve
    that arrives later (a slow first attempt) holds nothing. Keyed by id and
    reason: the saga's compensation, a cancel and the expiry sweep may all
    release one reservation, and each gets its own first answer back.
    """
    check_key(reservation_id, "reservation_id")
    if reason not in RELEASE_REASONS:
        raise InvalidInventoryRequest(f"reason must be one of {', '.join(RELEASE_REASONS)}")
    key = f"{reservation_id}/{reason}"
    digest = idempotency.fingerprint(reason)
    async with conn.transaction():
        stored = await idempotency.claim(conn, "release", key, digest, lock=_lock(reservation_id))
        if stored is None:
            result = await _first_release(conn, reservation_id, reason, workflow)
            stored = idempotency.outcome(result)
            await idempotency.remember(conn, "release", key, digest, stored)
    return idempotency.replay(stored, ReleaseResult)


async def _first_release(
    conn: asyncpg.Connection,
    reservation_id: str,
    reason: str,
    workflow: outbox.WorkflowRef | None,
) -> ReleaseResult:
    current = await conn.fetchrow(
        "SELECT status, order_id FROM reservations WHERE reservation_id = $1", reservation_id
    )
    if current is None:
        await conn.execute(
            "INSERT INTO reservations"
            " (reservation_id, status, expires_at, release_reason, settled_at)"
            " VALUES ($1, 'released', now(), $2, now())",
            reservation_id,
            reason,
        )
        return ReleaseResult(reservation_id, RELEASED, released=False)
    if current["status"] != HELD:
        return ReleaseResult(reservation_id, current["status"], released=False)

    lines = await _lines(conn, reservation_id)
    after = [
        await _change(conn, "reserved = reserved - $2", line.sku, line.quantity) for line in lines
    ]
    status = EXPIRED if reason == REASON_EXPIRED else RELEASED
    await conn.execute(
        "UPDATE reservations SET status = $2, release_reason = $3, settled_at = now()"
        " WHERE reservation_id = $1",
        reservation_id,
        status,
        reason,
    )
    levels = [s.to_proto() for s in after]
    order_id = current["order_id"]
    event: ReservationExpired | ReservationReleased
    if status == EXPIRED:
        event = ReservationExpired(
            reservation_id=reservation_id,
            order_id=order_id,
            items=_items(lines),
            stock_after=levels,
        )
    else:
        event = ReservationReleased(
            reservation_id=reservation_id,
            order_id=order_id,
            items=_items(lines),
            reason=_PROTO_REASON[reason],
            stock_after=levels,
        )
    await outbox.append(
        conn,
        producer=PRODUCER,
        topic=TOPIC,
        aggregate_type=AGGREGATE,
        aggregate_id=reservation_id,
        payload=event,
        workflow=workflow,
    )
    return ReleaseResult(reservation_id, status, released=True, stock_after=after)


async def prune(conn: asyncpg.Connection, limit: int) -> int:
    """Delete up to `limit` reservations settled more than RETENTION_DAYS ago (their
    lines with them), oldest first; how many. Past that retention their keys are
    pruned too, and nothing asks for them any more; kept, they grew without end. So
    did their event sequences (outbox_sequence, a row per reservation): a settled
    reservation emits no event again, so its row goes with it."""
    pruned = await conn.fetchval(
        "WITH pruned AS (DELETE FROM reservations WHERE reservation_id IN"
        " (SELECT reservation_id FROM reservations"
        " WHERE settled_at < now() - make_interval(days => $1)"
        " AND status <> 'held' ORDER BY settled_at LIMIT $2) RETURNING reservation_id),"
        " sequences AS (DELETE FROM outbox_sequence WHERE aggregate_type = $3"
        " AND aggregate_id IN (SELECT reservation_id FROM pruned))"
        " SELECT count(*) FROM pruned",
        idempotency.RETENTION_DAYS,
        limit,
        AGGREGATE,
    )
    return int(pruned)


@dataclass(frozen=True)
class DueKey:
    """A due reservation's place in the sweep's order: (expires_at, reservation_id)."""

    expires_at: datetime
    reservation_id: str


async def due(
    conn: asyncpg.Connection, as_of: datetime, limit: int, after: DueKey | None = None
) -> list[DueKey]:
    """Held reservations whose expiry is at or before `as_of`, oldest first, those
    after `after` only, from the start without it (the partial index
    `reservations_held_expiry` holds exactly these rows; the `expires_at >=` bound
    lets it skip to the cursor)."""
    after = after or _BEFORE_EVERY_RESERVATION
    rows = await conn.fetch(
        "SELECT expires_at, reservation_id FROM reservations"
        " WHERE status = 'held' AND expires_at <= $1 AND expires_at >= $3"
        " AND (expires_at, reservation_id) > ($3, $4)"
        " ORDER BY expires_at, reservation_id LIMIT $2",
        as_of,
        limit,
        after.expires_at,
        after.reservation_id,
    )
    return [DueKey(row["expires_at"], row["reservation_id"]) for row in rows]


# Sorts before any reservation: ids are never empty (check_key).
_BEFORE_EVERY_RESERVATION = DueKey(datetime.min.replace(tzinfo=UTC), "")


async def commit(
    conn: asyncpg.Connection,
    reservation_id: str,
    *,
    workflow: outbox.WorkflowRef | None = None,
) -> CommitResult:
    """Turn a held reservation into a deduction of on_hand (exactly once per id).

    Raises ReservationNotFound for an unknown id and ReservationNotHeld when it
    was released or expired first: its stock may already be someone else's.
    """
    check_key(reservation_id, "reservation_id")
    digest = idempotency.fingerprint()
    async with conn.transaction():
        stored = await idempotency.claim(
            conn, "commit", reservation_id, digest, lock=_lock(reservation_id)
        )
        if stored is None:
            result = await _first_commit(conn, reservation_id, workflow)
            stored = idempotency.outcome(result)
            await idempotency.remember(conn, "commit", reservation_id, digest, stored)
    return idempotency.replay(stored, CommitResult)


async def _first_commit(
    conn: asyncpg.Connection, reservation_id: str, workflow: outbox.WorkflowRef | None
) -> CommitResult:
    current = await conn.fetchrow(
        "SELECT status, order_id FROM reservations WHERE reservation_id = $1", reservation_id
    )
    if current is None:
        raise ReservationNotFound(f"no reservation {reservation_id!r}")
    if current["status"] != HELD:
        raise ReservationNotHeld(
            f"reservation {reservation_id!r} is {current['status']}, its stock is no longer held"
        )
    lines = await _lines(conn, reservation_id)
    after = [
        await _change(
            conn, "on_hand = on_hand - $2, reserved = reserved - $2", line.sku, line.quantity
        )
        for line in lines
    ]
    await conn.execute(
        "UPDATE reservations SET status = 'committed', settled_at = now()"
        " WHERE reservation_id = $1",
        reservation_id,
    )
    await outbox.append(
        conn,
        producer=PRODUCER,
        topic=TOPIC,
        aggregate_type=AGGREGATE,
        aggregate_id=reservation_id,
        payload=ReservationCommitted(
            reservation_id=reservation_id,
            order_id=current["order_id"],
            items=_items(lines),
            stock_after=[s.to_proto() for s in after],
        ),
        workflow=workflow,
    )
    return CommitResult(reservation_id, COMMITTED, committed=True, stock_after=after)


async def _lines(conn: asyncpg.Connection, reservation_id: str) -> list[StockLine]:
    # COLLATE "C": code-point order, the order `reserve` locks in (Python's sorted);
    # the database's own collation (en_US, say) would lock "a1", "B1" the other way.
    rows = await conn.fetch(
        "SELECT sku, quantity FROM reservation_lines WHERE reservation_id = $1"
        ' ORDER BY sku COLLATE "C"',
        reservation_id,
    )
    return [StockLine(row["sku"], row["quantity"]) for row in rows]


async def _change(
    conn: asyncpg.Connection, assignment: str, sku: str, quantity: int
) -> StockSnapshot:
    """Apply `assignment` ($2 = quantity) to one sku's row and return its new level."""
    row = await conn.fetchrow(
        f"UPDATE stock SET {assignment}, version = version + 1, updated_at = now()"
        " WHERE sku = $1 RETURNING sku, on_hand, reserved, version, updated_at",
        sku,
        quantity,
    )
    return StockSnapshot.from_row(row)
