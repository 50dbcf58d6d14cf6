"""Inventory's gRPC read API: stock levels by sku. Writes go through Temporal activities."""

from __future__ import annotations

import asyncpg

from contracts.agora.inventory.v1 import (
    BatchGetStockRequest,
    BatchGetStockResponse,
    GetStockRequest,
    GetStockResponse,
    InventoryServiceBase,
)
from workers.inventory import levels
from workers.inventory.errors import InvalidInventoryRequest, UnknownSku
from workers.inventory.model import check_sku

MAX_BATCH = 500


class InventoryApi(InventoryServiceBase):
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def get_stock(self, message: GetStockRequest) -> GetStockResponse:
        snapshot = await levels.get(self.pool, check_sku(message.sku))
        if snapshot is None:
            raise UnknownSku([message.sku])
        return GetStockResponse(stock=snapshot.to_proto())

    async def batch_get_stock(self, message: BatchGetStockRequest) -> BatchGetStockResponse:
        skus = list(dict.fromkeys(message.skus))  # de-duplicated, in the caller's order
        if len(skus) > MAX_BATCH:
            raise InvalidInventoryRequest(f"at most {MAX_BATCH} skus per call")
        found = await levels.get_many(self.pool, [check_sku(sku) for sku in skus])
        return BatchGetStockResponse(
            stock=[found[sku].to_proto() for sku in skus if sku in found],
            not_found=[sku for sku in skus if sku not in found],
        )
