"""Inventory's domain errors.

Each carries `failure_type`, the stable `ApplicationError.type` its activity
raises (the order saga and the gateway switch on it; agora.errors.DomainError),
besides the gRPC / HTTP status it inherits from agora.errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from agora.errors import Conflict, DomainError, InvalidArgument, NotFound


@dataclass(frozen=True)
class Shortage:
    """One line that could not be reserved: how much was asked, how much was free."""

    sku: str
    requested: int
    available: int

    @classmethod
    def after_refusal(cls, sku: str, requested: int, available_now: int) -> Shortage:
        """The shortage of a refused line, from a count read just after the refusal.

        That read is a new snapshot: units released since the refusal may be in it,
        even more than were asked for. The refusal stands (it was right when made),
        so its detail says no more than one unit short of the request was free.
        """
        return cls(sku, requested, min(available_now, requested - 1))


class InventoryError(DomainError):
    failure_type = "InventoryError"


class OutOfStock(InventoryError):
    """Some line of a reservation asks for more than is available: nothing was reserved."""

    code = "out-of-stock"
    failure_type = "OutOfStock"

    def __init__(self, shortages: list[Shortage]):
        self.shortages = shortages
        listed = ", ".join(
            f"{s.sku} (requested {s.requested}, available {s.available})" for s in shortages
        )
        super().__init__(f"out of stock: {listed}")

    def failure_details(self) -> list[Any]:
        return [dataclasses.asdict(s) for s in self.shortages]


class UnknownSku(InventoryError, NotFound):
    code = "unknown-sku"
    failure_type = "UnknownSku"

    def __init__(self, skus: list[str]):
        self.skus = skus
        super().__init__(f"no stock record for sku: {', '.join(skus)}")


class InvalidQuantity(InventoryError, InvalidArgument):
    code = "invalid-quantity"
    failure_type = "InvalidQuantity"


class InvalidInventoryRequest(InventoryError, InvalidArgument):
    """A malformed request (empty key, bad sku, no lines, bad TTL or reason)."""

    code = "invalid-argument"
    failure_type = "InvalidArgument"


class ReservationNotFound(InventoryError, NotFound):
    code = "reservation-not-found"
    failure_type = "ReservationNotFound"


class ReservationNotHeld(InventoryError):
    """Commit of a reservation that was already released or expired: its stock is gone."""

    code = "reservation-not-held"
    failure_type = "ReservationNotHeld"


class IdempotencyKeyReused(InventoryError, Conflict):
    """The same key was sent with a different request: refusing beats guessing."""

    code = "idempotency-key-reused"
    failure_type = "IdempotencyKeyReused"
