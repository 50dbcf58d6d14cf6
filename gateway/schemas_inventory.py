"""Request and response bodies of the inventory routes (strict, like gateway/schemas.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from gateway.schemas import Answer, Strict

# The most one restock may add; larger receipts are several restocks (or a stock count).
MAX_RESTOCK = 1_000_000


class RestockRequest(Strict):
    quantity: Annotated[int, Field(ge=1, le=MAX_RESTOCK, description="Units received")]


class StockLevelResponse(Answer):
    sku: str
    on_hand: int
    reserved: int
    available: int = Field(description="on_hand - reserved: what can still be ordered")
    version: int = Field(description="Grows with every change of this sku's stock")
    updated_at: datetime | None = None


class RestockResponse(Answer):
    sku: str
    quantity: int
    stock: StockLevelResponse
