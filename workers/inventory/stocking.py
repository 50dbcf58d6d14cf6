"""Changes to on_hand outside reservations: restock, adjust, and set (seeding, stock counts).

Each is keyed by the caller's idempotency key and emits one StockRestocked per
sku it changed (with `change` saying which kind), in its own transaction.
"""

from __future__ import annotations

import asyncpg

from agora import outbox
from contracts.agora.inventory.v1 import StockChange, StockRestocked
from workers.inventory import idempotency
from workers.inventory.errors import InvalidInventoryRequest, InvalidQuantity, UnknownSku
from workers.inventory.model import (
    MAX_LINES,
    MAX_QUANTITY,
    RestockResult,
    SetStockResult,
    StockLine,
    StockSnapshot,
    check_key,
    check_quantity,
    check_sku,
)
from workers.inventory.reservations import PRODUCER, TOPIC

AGGREGATE = "stock"
_COLUMNS = "sku, on_hand, reserved, version, updated_at"


async def restock(
    conn: asyncpg.Connection,
    key: str,
    sku: str,
    quantity: int,
    *,
    workflow: outbox.WorkflowRef | None = None,
) -> RestockResult:
    """Add received goods to on_hand; a sku seen for the first time gets its stock row."""
    check_key(key)
    check_sku(sku)
    check_quantity(quantity)
    digest = idempotency.fingerprint(sku, quantity)
    async with conn.transaction():
        stored = await idempotency.claim(conn, "restock", key, digest)
        if stored is None:
            row = await conn.fetchrow(
                f"""
                INSERT INTO stock (sku, on_hand) VALUES ($1, $2)
                ON CONFLICT (sku) DO UPDATE SET on_hand = stock.on_hand + EXCLUDED.on_hand,
                    version = stock.version + 1, updated_at = now()
                WHERE stock.on_hand + EXCLUDED.on_hand <= {MAX_QUANTITY}
                RETURNING {_COLUMNS}
                """,
                sku,
                quantity,
            )
            if row is None:
                raise InvalidQuantity(f"on_hand of {sku} would exceed {MAX_QUANTITY}")
            after = StockSnapshot.from_row(row)
            await _emit(conn, key, after, quantity, StockChange.RESTOCK, workflow)
            stored = idempotency.outcome(RestockResult(sku, quantity, after))
            await idempotency.remember(conn, "restock", key, digest, stored)
    return idempotency.replay(stored, RestockResult)


async def adjust(
    conn: asyncpg.Connection,
    key: str,
    sku: str,
    delta: int,
    *,
    workflow: outbox.WorkflowRef | None = None,
) -> RestockResult:
    """Correct on_hand by a signed amount; it may not drop below what is reserved."""
    check_key(key)
    check_sku(sku)
    if delta == 0 or abs(delta) > MAX_QUANTITY:
        raise InvalidQuantity(f"delta must be non-zero and at most {MAX_QUANTITY} in size")
    digest = idempotency.fingerprint(sku, delta)
    async with conn.transaction():
        stored = await idempotency.claim(conn, "adjust", key, digest)
        if stored is None:
            row = await conn.fetchrow(
                f"""
                UPDATE stock SET on_hand = on_hand + $2, version = version + 1, updated_at = now()
                WHERE sku = $1 AND on_hand + $2 >= reserved AND on_hand + $2 <= {MAX_QUANTITY}
                RETURNING {_COLUMNS}
                """,
                sku,
                delta,
            )
            if row is None:
                if await conn.fetchval("SELECT 1 FROM stock WHERE sku = $1", sku) is None:
                    raise UnknownSku([sku])
                raise InvalidQuantity(
                    f"adjusting {sku} by {delta} would leave on_hand below reserved or out of range"
                )
            after = StockSnapshot.from_row(row)
            await _emit(conn, key, after, delta, StockChange.ADJUST, workflow)
            stored = idempotency.outcome(RestockResult(sku, delta, after))
            await idempotency.remember(conn, "adjust", key, digest, stored)
    return idempotency.replay(stored, RestockResult)


async def set_stock(
    conn: asyncpg.Connection,
    key: str,
    levels: list[StockLine],
    *,
    overwrite: bool = False,
    workflow: outbox.WorkflowRef | None = None,
) -> SetStockResult:
    """Set on_hand for many skus in one transaction (seeding, stock counts).

    Without `overwrite` only skus that have no stock row yet are created, so a
    seed run again (with any key) changes nothing; with it, existing skus are
    set too, but never below what they have reserved. Set-based SQL over
    arrays: a batch of a thousand skus is a handful of statements plus its events.
    """
    check_key(key)
    if len(levels) > MAX_LINES:
        raise InvalidInventoryRequest(f"at most {MAX_LINES} levels per call: split the batch")
    wanted: dict[str, int] = {}
    for level in levels:
        check_sku(level.sku)
        check_quantity(level.quantity, allow_zero=True)
        if wanted.setdefault(level.sku, level.quantity) != level.quantity:
            raise InvalidInventoryRequest(f"sku {level.sku} appears with two quantities")
    skus = sorted(wanted)
    digest = idempotency.fingerprint(overwrite, [[sku, wanted[sku]] for sku in skus])
    async with conn.transaction():
        stored = await idempotency.claim(conn, "set_stock", key, digest)
        if stored is None:
            result = await _set(conn, key, skus, wanted, overwrite, workflow)
            stored = idempotency.outcome(result)
            await idempotency.remember(conn, "set_stock", key, digest, stored)
    return idempotency.replay(stored, SetStockResult)


class StockChangedMeanwhile(RuntimeError):
    """Transient, not a DomainError: the activity is retried, not rejected."""


async def _set(
    conn: asyncpg.Connection,
    key: str,
    skus: list[str],
    wanted: dict[str, int],
    overwrite: bool,
    workflow: outbox.WorkflowRef | None,
) -> SetStockResult:
    # Lock existing rows in sku order (no deadlock with reservations, which lock the same
    # way): code-point order (COLLATE "C"), whatever the database's collation. Only
    # to overwrite them: a seed that creates the missing skus changes no existing
    # row, and its locks held reserves of up to 1,000 skus for the whole batch.
    existing = {
        row["sku"]: row
        for row in await conn.fetch(
            "SELECT sku, on_hand, reserved FROM stock WHERE sku = ANY($1::text[])"
            ' ORDER BY sku COLLATE "C"' + (" FOR UPDATE" if overwrite else ""),
            skus,
        )
    }
    fresh = [sku for sku in skus if sku not in existing]
    changed = [
        sku
        for sku in skus
        if overwrite and sku in existing and existing[sku]["on_hand"] != wanted[sku]
    ]
    below = [sku for sku in changed if wanted[sku] < existing[sku]["reserved"]]
    if below:
        raise InvalidQuantity(f"on_hand would drop below reserved for: {', '.join(below[:10])}")

    created = await conn.fetch(
        f"""
        INSERT INTO stock (sku, on_hand)
        SELECT * FROM unnest($1::text[], $2::bigint[])
        ON CONFLICT (sku) DO NOTHING
        RETURNING {_COLUMNS}
        """,
        fresh,
        [wanted[sku] for sku in fresh],
    )
    if overwrite and len(created) < len(fresh):
        # A restock created one of them since the locking read: its row was not locked
        # and would be reported unchanged with the count never written. The whole call
        # is undone (the key's claim with it) and retried, and then finds the row.
        raise StockChangedMeanwhile("a sku being set was created concurrently; retry")
    updated = await conn.fetch(
        """
        UPDATE stock s SET on_hand = w.on_hand, version = s.version + 1, updated_at = now()
        FROM unnest($1::text[], $2::bigint[]) AS w(sku, on_hand)
        WHERE s.sku = w.sku
        RETURNING s.sku, s.on_hand, s.reserved, s.version, s.updated_at
        """,
        changed,
        [wanted[sku] for sku in changed],
    )
    for row in created:
        await _emit(
            conn, key, StockSnapshot.from_row(row), row["on_hand"], StockChange.SET, workflow
        )
    for row in updated:
        delta = row["on_hand"] - existing[row["sku"]]["on_hand"]
        await _emit(conn, key, StockSnapshot.from_row(row), delta, StockChange.SET, workflow)
    return SetStockResult(
        created=len(created),
        updated=len(updated),
        unchanged=len(skus) - len(created) - len(updated),
    )


async def _emit(
    conn: asyncpg.Connection,
    key: str,
    after: StockSnapshot,
    quantity: int,
    change: StockChange,
    workflow: outbox.WorkflowRef | None,
) -> None:
    await outbox.append(
        conn,
        producer=PRODUCER,
        topic=TOPIC,
        aggregate_type=AGGREGATE,
        aggregate_id=after.sku,
        payload=StockRestocked(
            sku=after.sku,
            quantity=quantity,
            stock_after=after.to_proto(),
            change=change,
            key=key,
        ),
        workflow=workflow,
    )
