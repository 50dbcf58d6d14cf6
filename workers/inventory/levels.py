"""Reading stock levels: one sku or a batch, straight from the primary key."""

from __future__ import annotations

import asyncpg

from workers.inventory.model import StockSnapshot

_SELECT = "SELECT sku, on_hand, reserved, version, updated_at FROM stock"


async def get(pool: asyncpg.Pool, sku: str) -> StockSnapshot | None:
    row = await pool.fetchrow(f"{_SELECT} WHERE sku = $1", sku)
    return StockSnapshot.from_row(row) if row is not None else None


async def get_many(pool: asyncpg.Pool, skus: list[str]) -> dict[str, StockSnapshot]:
    rows = await pool.fetch(f"{_SELECT} WHERE sku = ANY($1::text[])", skus)
    return {row["sku"]: StockSnapshot.from_row(row) for row in rows}
