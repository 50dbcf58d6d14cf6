"""Payments' domain errors.

Each carries the `ApplicationError.type` an activity fails with (non-retryable:
retrying a business rejection cannot help) and the gRPC status of the read API.
Messages never hold card data: at most the brand and the last four digits.
"""

from __future__ import annotations

from typing import Any

from grpclib.const import Status

from agora.errors import Conflict, DomainError, InvalidArgument, NotFound


class PaymentError(DomainError):
    """Base of payments' rejections; `failure_type` is the activity failure's type."""

    failure_type = "PaymentError"


class PaymentDeclined(PaymentError):
    """The PSP declined the authorization (insufficient funds, expired card, ...)."""

    code = "payment-declined"
    failure_type = "PaymentDeclined"
    grpc_status = Status.FAILED_PRECONDITION
    http_status = 402

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or f"payment declined: {reason}")
        self.reason = reason

    def failure_details(self) -> list[Any]:
        return [self.reason]


class PaymentRequiresAction(PaymentError):
    """The PSP wants a further step from the cardholder (3-D-Secure-like)."""

    code = "payment-requires-action"
    failure_type = "PaymentRequiresAction"
    grpc_status = Status.FAILED_PRECONDITION
    http_status = 402

    def __init__(self, next_action_url: str):
        super().__init__("the card requires authentication by its holder")
        self.next_action_url = next_action_url

    def failure_details(self) -> list[Any]:
        return ["requires_action", self.next_action_url]


class IdempotencyKeyConflict(PaymentError, Conflict):
    """The idempotency key was used before with other parameters (or another operation)."""

    code = "idempotency-key-conflict"
    failure_type = "IdempotencyKeyConflict"


class PaymentStateConflict(PaymentError, Conflict):
    """The intent's state does not allow the operation (e.g. capture after void)."""

    code = "payment-state-conflict"
    failure_type = "PaymentStateConflict"


class PaymentAmountExceeded(PaymentError):
    """A capture above what is still authorized, or a refund above what is captured."""

    code = "payment-amount-exceeded"
    failure_type = "PaymentAmountExceeded"


class PaymentNotFound(PaymentError, NotFound):
    code = "payment-not-found"
    failure_type = "PaymentNotFound"


class InvalidPaymentRequest(PaymentError, InvalidArgument):
    """Malformed input; `field` names the input at fault when a caller acts on which
    (the saga: a card token its PSP does not know is the customer's decline, not a
    platform failure)."""

    code = "invalid-payment-request"
    failure_type = "InvalidPaymentRequest"

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.field = field

    def failure_details(self) -> list[Any]:
        return [self.field] if self.field else []


# The retryable failure type of an activity whose PSP call failed transiently.
PSP_UNAVAILABLE = "PspUnavailable"
