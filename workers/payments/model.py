"""The typed inputs and results of the payment operations: the activity boundary.

The order saga passes these to `payments.authorize`, `payments.capture`,
`payments.void` and `payments.refund` (activities/payments.py re-exports them).
Every input carries the caller's idempotency key: a retried call with the same
key returns the first result, the same key with other parameters is refused.
Amounts are integer minor units of `currency` (ISO 4217), never floats.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

# Fixed namespace for ids derived from idempotency keys (uuid5): the same key
# gives the same id in every process and in workflow code (no randomness).
_ID_NAMESPACE = uuid.UUID("5d1f1e2a-7c55-4a53-9f3e-6a2b0d0c9a11")


def payment_id_for(authorize_key: str) -> str:
    """The payment id an authorization with this idempotency key creates.

    Deterministic, so a saga can register `payments.void` for the payment
    before it authorizes, and a void that runs first (or instead) still finds it.
    """
    return str(uuid.uuid5(_ID_NAMESPACE, f"authorize:{authorize_key}"))


def operation_id_for(operation: str, key: str) -> str:
    """The id of a capture / void / refund (and of its ledger movement) from its key."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{operation}:{key}"))


class Status(StrEnum):
    """An intent's status; the lower-case names of the proto's PaymentStatus."""

    PENDING = "pending"  # authorization sent to the PSP, no answer recorded yet
    REQUIRES_ACTION = "requires_action"
    DECLINED = "declined"
    AUTHORIZED = "authorized"
    PARTIALLY_CAPTURED = "partially_captured"
    CAPTURED = "captured"
    VOIDED = "voided"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


def status_from_amounts(authorized: int, captured: int, released: int, refunded: int) -> Status:
    """The status of an authorized intent, which its amounts fully determine."""
    if refunded > 0:
        settled = captured + released == authorized
        return Status.REFUNDED if refunded == captured and settled else Status.PARTIALLY_REFUNDED
    if captured > 0:
        return Status.CAPTURED if captured + released == authorized else Status.PARTIALLY_CAPTURED
    if released > 0:
        return Status.VOIDED
    return Status.AUTHORIZED


@dataclass
class AuthorizeInput:
    idempotency_key: str
    order_id: str
    amount_minor: int
    currency: str
    # A token of the PSP (workers.payments.psp_sim.tokenize for the simulator),
    # never a card number: the payments service refuses anything that is not one.
    card_token: str
    customer_id: str = ""


@dataclass
class AuthorizeResult:
    payment_id: str
    order_id: str
    status: str
    amount_minor: int
    currency: str
    card_brand: str
    card_last4: str
    psp_reference: str


@dataclass
class CaptureInput:
    idempotency_key: str
    payment_id: str
    # None captures everything still authorized; several partial captures may
    # follow one another up to the authorized amount.
    amount_minor: int | None = None


@dataclass
class CaptureResult:
    payment_id: str
    capture_id: str
    amount_minor: int
    total_captured_minor: int
    remaining_authorized_minor: int
    currency: str
    status: str


@dataclass
class VoidInput:
    idempotency_key: str
    payment_id: str


@dataclass
class VoidResult:
    payment_id: str
    # What the void released from the hold; 0 when nothing was held (declined,
    # never authorized, already released): a compensation may always run.
    released_minor: int
    currency: str
    status: str


@dataclass
class RefundInput:
    idempotency_key: str
    payment_id: str
    # None refunds everything captured and not yet refunded.
    amount_minor: int | None = None
    reason: str = ""


@dataclass
class RefundResult:
    payment_id: str
    refund_id: str
    amount_minor: int
    total_refunded_minor: int
    currency: str
    status: str
