"""The order saga's inputs, answers, ids and search attributes.

Shared by the gateway (which starts and updates the saga) and the workflow. A
module of its own, passed through the workflow sandbox: the sandbox re-imports a
workflow's module for every new run, and building these dataclasses again each
time was a measurable part of the orders worker's CPU under load.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field

from temporalio.common import SearchAttributeKey

from activities.orders import OrderLineInput, PricedLine

TASK_QUEUE = "agora-orders"
INVENTORY_QUEUE = "agora-inventory"
PAYMENTS_QUEUE = "agora-payments"

# Visible in the Temporal UI and in visibility queries (registered by `make run`).
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
ORDER_ID = SearchAttributeKey.for_keyword("OrderId")
ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
ORDER_TOTAL = SearchAttributeKey.for_int("OrderTotal")
ITEM_COUNT = SearchAttributeKey.for_int("ItemCount")
PAYMENT_OUTCOME = SearchAttributeKey.for_keyword("PaymentOutcome")

_NAMESPACE = uuid.UUID("0c6f7a52-2d8e-4b8e-9d4a-5b7f3c1e9a20")


def order_id_for(customer_id: str, idempotency_key: str) -> str:
    """One order per customer and Idempotency-Key: a retried POST finds the same order."""
    return str(uuid.uuid5(_NAMESPACE, f"{customer_id}\n{idempotency_key}"))


def order_workflow_id(order_id: str) -> str:
    return f"order-{order_id}"


def refund_workflow_id(order_id: str, refund_key: str) -> str:
    digest = hashlib.sha256(refund_key.encode()).hexdigest()[:24]
    return f"refund-{order_id}-{digest}"


# Update ids: Temporal joins an update sent again with the same id to the first.
CANCEL_UPDATE_ID = "cancel"


def completion_update_id(card_token: str, next_action_url: str) -> str:
    """One payment round's completion with one token (each round has its own URL)."""
    digest = hashlib.sha256(f"{card_token}\n{next_action_url}".encode()).hexdigest()[:24]
    return f"complete-payment-{digest}"


KEY_REUSED = "this Idempotency-Key placed another order: use a new key for a new order"


def request_digest(
    lines: list[OrderLineInput], currency: str, expected_total_minor: int | None = None
) -> str:
    """What a POST ordered: a retry with its Idempotency-Key must order the same. The card
    token is left out: a page that tokenizes the card again on a double click sends
    another token for the same order (the first one pays). The expected total is in only
    when the POST sent one: a retried POST of an order placed without it (every order
    placed before it existed, whose saga holds the digest) keeps its digest."""
    asked: dict[str, object] = {
        "lines": [[line.sku, line.quantity] for line in lines],
        "currency": currency,
    }
    if expected_total_minor is not None:
        asked["expected_total_minor"] = expected_total_minor
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


BASIS_POINTS = 10_000


def highest_total_accepted(expected_total_minor: int, tolerance_bps: int) -> int:
    """The most an order the customer was shown at `expected_total_minor` may come to:
    the tolerance rounded down, in integers (the same answer on every replay)."""
    return expected_total_minor + expected_total_minor * tolerance_bps // BASIS_POINTS


@dataclass
class OrderInput:
    order_id: str
    customer_id: str
    idempotency_key: str
    lines: list[OrderLineInput]
    currency: str
    card_token: str
    # An order waiting for its payment (e.g. 3-D Secure) is given up after this.
    payment_timeout_s: int = 900
    reservation_ttl_s: int = 3600
    # A PSP that has not answered within this is retried, then given up (and voided).
    payment_step_timeout_s: float = 5.0
    # Pricing (catalog) is tried this many times through an outage (backing off 1, 2,
    # 4, 8, then 10 s: about 35 s for 7), then the order is rejected
    # (PRICING_UNAVAILABLE) with nothing reserved or charged. Without a bound, an order
    # whose POST timed out in a catalog outage was placed and charged whenever catalog
    # came back, hours later perhaps, long after the client gave up. A count, not a
    # schedule-to-close timeout: the SDK (temporalio 1.35) checks a local activity's
    # schedule-to-close only after a backoff longer than its local retry threshold, a
    # minute or more late (tests/unit/test_order_saga.py shows the count is kept).
    pricing_attempts: int = 7
    # The total the customer was shown (the cart's), when the POST sent it: catalog's
    # prices coming to more than highest_total_accepted(it, price_tolerance_bps) reject
    # the order PRICE_CHANGED before anything is recorded, reserved or charged; a lower
    # total is taken. None (sagas started before it, POSTs without it): no check.
    expected_total_minor: int | None = None
    # The platform's tolerance (AGORA_ORDER_PRICE_TOLERANCE_BPS) as the saga started, in
    # its input so a replay decides as the run did whatever the setting is by then.
    price_tolerance_bps: int = 0


@dataclass
class OrderView:
    """What the `status` query and the updates answer."""

    order_id: str
    status: str  # RECEIVED, PENDING, AWAITING_PAYMENT, CONFIRMED, COMPLETED, CANCELLED, REJECTED
    currency: str = ""
    total_minor: int = 0
    lines: list[PricedLine] = field(default_factory=list)
    reason: str = ""
    rejection: str = ""
    # What has been refunded of the order (a compensation's, or refunds after completion).
    refunded_minor: int = 0
    reservation_id: str = ""
    payment_id: str = ""
    payment_outcome: str = ""
    next_action_url: str = ""
    # request_digest of what the POST asked for (empty in sagas started before it).
    request_digest: str = ""


@dataclass
class CancelInput:
    requested_by: str
    reason: str = "cancelled by the customer"
    # The order it is for, which the saga checks (OrderWorkflow._for_this_order).
    order_id: str = ""


@dataclass
class CompletePaymentInput:
    """The customer finished the payment's extra step; a fresh token to authorize with."""

    card_token: str
    # The order it is for, which the saga checks (OrderWorkflow._for_this_order).
    order_id: str = ""


@dataclass
class RefundOrderInput:
    order_id: str
    refund_key: str
    amount_minor: int | None  # None: everything not yet refunded
    reason: str = ""
    # A cancel after completion: refund everything, return the stock, end CANCELLED.
    cancel: bool = False
    requested_by: str = ""
    lines: list[OrderLineInput] = field(default_factory=list)


# The refund key of a cancel after completion: one per order (a cancel happens once).
CANCEL_REFUND_KEY = "cancel"


def cancel_refund(order_id: str, cancel: CancelInput) -> RefundOrderInput:
    """A cancel after completion: everything refunded under the key `cancel`, the stock
    returned, the order CANCELLED (the gateway's and the saga's, alike)."""
    return RefundOrderInput(
        order_id=order_id,
        refund_key=CANCEL_REFUND_KEY,
        amount_minor=None,
        reason=cancel.reason,
        cancel=True,
        requested_by=cancel.requested_by,
    )
