"""Inventory's value types: what its operations take and return.

They are plain dataclasses so that they cross the Temporal boundary as they
are (activities/inventory.py re-exports them beside its inputs) and are stored
as the JSON result of an idempotent operation.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from agora import text
from contracts.agora.inventory.v1 import StockLevel
from workers.inventory.errors import InvalidInventoryRequest, InvalidQuantity

# A sku is an opaque catalog key; this only keeps out what cannot be one.
SKU_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_QUANTITY = 1_000_000_000

# Reservation statuses, as stored.
HELD = "held"
COMMITTED = "committed"
RELEASED = "released"
EXPIRED = "expired"

# Release reasons (ReleaseInput.reason).
REASON_COMPENSATION = "compensation"
REASON_ORDER_CANCELLED = "order_cancelled"
REASON_EXPIRED = "expired"
RELEASE_REASONS = (REASON_COMPENSATION, REASON_ORDER_CANCELLED, REASON_EXPIRED)


@dataclass(frozen=True)
class StockLine:
    """A quantity of one sku: a reservation line, or a level to set when seeding."""

    sku: str
    quantity: int


@dataclass(frozen=True)
class StockSnapshot:
    """One sku's stock at a moment; `version` orders snapshots of the same sku."""

    sku: str
    on_hand: int
    reserved: int
    available: int
    version: int
    updated_at: str  # ISO 8601

    @classmethod
    def from_row(cls, row: Any) -> StockSnapshot:
        return cls(
            sku=row["sku"],
            on_hand=row["on_hand"],
            reserved=row["reserved"],
            available=row["on_hand"] - row["reserved"],
            version=row["version"],
            updated_at=row["updated_at"].isoformat(),
        )

    def to_proto(self) -> StockLevel:
        return StockLevel(
            sku=self.sku,
            on_hand=self.on_hand,
            reserved=self.reserved,
            available=self.available,
            version=self.version,
            updated_at=dt.datetime.fromisoformat(self.updated_at),
        )


@dataclass(frozen=True)
class ReserveResult:
    """A reservation as it stands after `reserve`.

    `status` is "held" on success. A reservation released before its reserve
    arrived (a compensation that overtook a slow first attempt) answers
    "released" and holds nothing. A retry answers the first result ("held"),
    even after a commit or release; only once that record is pruned does it read
    the reservation as it stands.
    """

    reservation_id: str
    status: str
    expires_at: str  # ISO 8601
    lines: list[StockLine] = field(default_factory=list)
    stock_after: list[StockSnapshot] = field(default_factory=list)


@dataclass(frozen=True)
class ReleaseResult:
    """`released` is true only for the call that gave the stock back."""

    reservation_id: str
    status: str
    released: bool
    stock_after: list[StockSnapshot] = field(default_factory=list)


@dataclass(frozen=True)
class CommitResult:
    """`committed` is true only for the call that deducted on_hand."""

    reservation_id: str
    status: str
    committed: bool
    stock_after: list[StockSnapshot] = field(default_factory=list)


@dataclass(frozen=True)
class RestockResult:
    sku: str
    quantity: int
    stock_after: StockSnapshot


@dataclass(frozen=True)
class SetStockResult:
    """How many skus a seeding batch created, changed, or found already as asked."""

    created: int
    updated: int
    unchanged: int


# Validation shared by the activities and the read API --------------------------

MAX_KEY_LENGTH = 200
MAX_LINES = 1000
MAX_TTL_SECONDS = 7 * 24 * 3600


def check_sku(sku: str) -> str:
    if not SKU_PATTERN.fullmatch(sku):
        raise InvalidInventoryRequest(f"invalid sku {sku[:80]!r}")
    return sku


def check_key(key: str, what: str = "key") -> str:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidInventoryRequest(f"{what} must be 1 to {MAX_KEY_LENGTH} characters")
    if not text.storable(key):
        # PostgreSQL refuses it on every retry of the activity: the caller's mistake.
        raise InvalidInventoryRequest(f"{what} must be text without NUL, in valid Unicode")
    return key


def check_quantity(quantity: int, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not low <= quantity <= MAX_QUANTITY:
        raise InvalidQuantity(f"quantity must be between {low} and {MAX_QUANTITY}, got {quantity}")
    return quantity


def merge_lines(lines: list[StockLine]) -> list[StockLine]:
    """Validated lines with one entry per sku, in sku order (the order rows are locked in)."""
    if not lines:
        raise InvalidInventoryRequest("at least one line is required")
    if len(lines) > MAX_LINES:
        raise InvalidInventoryRequest(f"at most {MAX_LINES} lines")
    totals: dict[str, int] = {}
    for line in lines:
        check_sku(line.sku)
        check_quantity(line.quantity)
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return [StockLine(sku, check_quantity(totals[sku])) for sku in sorted(totals)]
