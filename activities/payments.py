"""Payments' activities, run by the payments worker on task queue `agora-payments`.

The order saga calls them by name: `payments.authorize`, `payments.capture`,
`payments.void`, `payments.refund`. Each is idempotent by the input's
`idempotency_key` (a retried call returns the first result, one charge).

Failures:
* business rejections are non-retryable `ApplicationError`s with a stable type:
  `PaymentDeclined` (details=[reason], e.g. "insufficient_funds",
  "card_expired"), `PaymentRequiresAction` (details=["requires_action",
  next_action_url]), `PaymentAmountExceeded`, `PaymentStateConflict`,
  `IdempotencyKeyConflict`, `PaymentNotFound`, `InvalidPaymentRequest`;
* a transient PSP failure is a retryable `ApplicationError` of type
  `PspUnavailable`: Temporal's retry policy retries it with the same key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from agora import outbox
from agora.temporal import business_rejections
from workers.payments.errors import PSP_UNAVAILABLE
from workers.payments.intents import PaymentIntents
from workers.payments.model import (
    AuthorizeInput,
    AuthorizeResult,
    CaptureInput,
    CaptureResult,
    RefundInput,
    RefundResult,
    VoidInput,
    VoidResult,
    payment_id_for,
)
from workers.payments.psp import PspTransientError

__all__ = [
    "AuthorizeInput",
    "AuthorizeResult",
    "CaptureInput",
    "CaptureResult",
    "PaymentsActivities",
    "RefundInput",
    "RefundResult",
    "VoidInput",
    "VoidResult",
    "payment_id_for",
]

T = TypeVar("T")
Operation = Callable[[], Awaitable[T]]


def _workflow_ref() -> outbox.WorkflowRef:
    info = activity.info()
    return outbox.WorkflowRef(info.workflow_id or "", info.workflow_run_id or "")


@contextmanager
def _as_activity_failures() -> Iterator[None]:
    """Map payments' errors to the failures the saga branches on (module docstring)."""
    try:
        with business_rejections():
            yield
    except PspTransientError as exc:
        raise ApplicationError(str(exc), type=PSP_UNAVAILABLE) from None


class PaymentsActivities:
    """Holds payments' write side; each method is one idempotent activity."""

    def __init__(self, intents: PaymentIntents):
        self.intents = intents

    @activity.defn(name="payments.authorize")
    async def authorize(self, data: AuthorizeInput) -> AuthorizeResult:
        """Authorize (hold) the amount on the card; the payment id is payment_id_for(key)."""
        with _as_activity_failures():
            return await self.intents.authorize(data, _workflow_ref())

    @activity.defn(name="payments.capture")
    async def capture(self, data: CaptureInput) -> CaptureResult:
        """Capture all (amount None) or part of what is still authorized."""
        with _as_activity_failures():
            return await self.intents.capture(data, _workflow_ref())

    @activity.defn(name="payments.void")
    async def void(self, data: VoidInput) -> VoidResult:
        """Release the open hold; succeeds (releasing 0) when nothing is held."""
        with _as_activity_failures():
            return await self.intents.void(data, _workflow_ref())

    @activity.defn(name="payments.refund")
    async def refund(self, data: RefundInput) -> RefundResult:
        """Refund all (amount None) or part of what is captured and not yet refunded."""
        with _as_activity_failures():
            return await self.intents.refund(data, _workflow_ref())
