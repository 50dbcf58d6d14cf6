"""The one table from upstream failures (gRPC statuses, Temporal failures) to problems.

Reads fail with a grpclib `GRPCError`; writes fail with a Temporal failure whose
root cause is usually an `ApplicationError` carrying a business `type` (e.g.
"EmailTaken" raised by an identity activity). Both land here, so a status code
means the same thing to a client whichever path the request took.
"""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import (
    ApplicationError,
    FailureError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import (
    TimeoutError as TemporalTimeoutError,
)
from temporalio.service import RPCError, RPCStatusCode

from gateway.problems import RETRY_SOON, Problem

# gRPC status -> problem code (its HTTP status comes from gateway/problems.py).
GRPC_STATUS: dict[Status, str] = {
    Status.INVALID_ARGUMENT: "invalid-argument",
    Status.OUT_OF_RANGE: "invalid-argument",
    Status.UNAUTHENTICATED: "invalid-credentials",
    Status.PERMISSION_DENIED: "permission-denied",
    Status.NOT_FOUND: "not-found",
    Status.ALREADY_EXISTS: "conflict",
    Status.ABORTED: "conflict",
    Status.FAILED_PRECONDITION: "precondition-failed",
    Status.RESOURCE_EXHAUSTED: "upstream-rate-limited",
    Status.UNIMPLEMENTED: "not-implemented",
    Status.UNAVAILABLE: "upstream-unavailable",
    Status.DEADLINE_EXCEEDED: "upstream-timeout",
    Status.CANCELLED: "upstream-unavailable",
    Status.INTERNAL: "upstream-error",
    Status.UNKNOWN: "upstream-error",
    Status.DATA_LOSS: "upstream-error",
}

# What any route calling a service may answer when the call itself fails.
UPSTREAM_PROBLEMS = ("upstream-timeout", "upstream-unavailable", "upstream-error")

# Temporal ApplicationError.type (raised by activities / workflows) -> problem code.
APPLICATION_ERROR_TYPE: dict[str, str] = {
    "EmailTaken": "email-taken",
    "InvalidArgument": "invalid-argument",
    "InvalidRegistration": "invalid-argument",
    "NotFound": "not-found",
    "ApiClientNotFound": "not-found",
    "AlreadyExists": "conflict",
    "Conflict": "conflict",
    "PermissionDenied": "permission-denied",
    "FailedPrecondition": "precondition-failed",
    # Inventory (workers/inventory/errors.py).
    "OutOfStock": "precondition-failed",
    "UnknownSku": "not-found",
    "InvalidQuantity": "invalid-argument",
    "ReservationNotFound": "not-found",
    "ReservationNotHeld": "precondition-failed",
    "IdempotencyKeyReused": "conflict",
    # Payments (workers/payments/errors.py). A decline is a business rejection of
    # the request as it stands (another card may work): precondition-failed.
    "PaymentDeclined": "precondition-failed",
    "PaymentRequiresAction": "precondition-failed",
    "PaymentAmountExceeded": "precondition-failed",
    "PaymentStateConflict": "conflict",
    "IdempotencyKeyConflict": "conflict",
    "PaymentNotFound": "not-found",
    "InvalidPaymentRequest": "invalid-argument",
    # Orders (workflows/orders.py): the saga's rejection reasons, and refusals.
    "PRODUCT_UNAVAILABLE": "order-rejected",
    "PRICE_CHANGED": "order-rejected",
    "OUT_OF_STOCK": "order-rejected",
    "PAYMENT_DECLINED": "order-rejected",
    "PAYMENT_TIMEOUT": "order-rejected",
    "PAYMENT_FAILED": "order-rejected",
    "PRICING_UNAVAILABLE": "order-rejected",
    "OrderFinished": "conflict",
    # A second saga for an ended order's key (past the namespace's retention).
    "OrderAlreadyPlaced": "conflict",
    "NotAwaiting": "conflict",
    "NotRefundable": "conflict",
    # More than is left to refund: the same answer as payments' PaymentAmountExceeded.
    "RefundAmountInvalid": "precondition-failed",
    "InvalidOrderId": "invalid-argument",
}

# Statuses whose upstream message is safe and useful to show the client. Others
# (INTERNAL, UNKNOWN, ...) may carry internals: the client gets the title only.
_SHOW_DETAIL = frozenset(
    code for code in GRPC_STATUS.values() if code not in ("upstream-error", "upstream-unavailable")
)


def rejection_reason(reason: str) -> dict[str, str]:
    """The `reason` member of an order-rejected problem: the saga's rejection (a
    RejectionReason name, e.g. PRICE_CHANGED, OUT_OF_STOCK, or PRICING_UNAVAILABLE), so a
    client can tell prices to review from a card to change without reading `detail`."""
    return {"reason": reason} if reason else {}


def from_grpc(error: GRPCError) -> Problem:
    code = GRPC_STATUS.get(error.status, "upstream-error")
    detail = (error.message or "") if code in _SHOW_DETAIL else ""
    # A service over its capacity (RESOURCE_EXHAUSTED, e.g. agora.passwords.PasswordsBusy).
    headers = RETRY_SOON if code == "upstream-rate-limited" else None
    return Problem(code, detail, headers=headers)


def _root_cause(error: BaseException) -> BaseException:
    """The innermost failure: WorkflowFailureError -> ActivityError -> ApplicationError."""
    seen: BaseException = error
    while (
        isinstance(seen, WorkflowFailureError | WorkflowUpdateFailedError | FailureError)
        and seen.cause is not None
    ):
        seen = seen.cause
    return seen


def from_temporal(error: BaseException) -> Problem:
    """A workflow failure (possibly wrapping activity errors) or a Temporal RPC error."""
    if isinstance(error, WorkflowAlreadyStartedError):
        # The same workflow id is running: e.g. a registration of this email in flight.
        return Problem("conflict", "the same operation is already in progress")
    if isinstance(error, RPCError):
        if error.status == RPCStatusCode.DEADLINE_EXCEEDED or (
            # The SDK client's own rpc_timeout ran out first: "Timeout expired",
            # CANCELLED (a request's short X-Request-Timeout), a timeout not an outage.
            error.status == RPCStatusCode.CANCELLED and "timeout" in error.message.lower()
        ):
            return Problem("upstream-timeout")
        if error.status == RPCStatusCode.NOT_FOUND:
            # An update or signal to a workflow that has finished (e.g. cancelling an
            # order whose saga just ended): the request no longer applies, nothing failed.
            return Problem("conflict", "the operation's workflow is no longer running")
        if error.status == RPCStatusCode.INVALID_ARGUMENT:
            # Temporal refused the request as made (an id or a page token it cannot
            # take): retrying it would not help, unlike an outage.
            return Problem("invalid-argument", "the request cannot be carried out as made")
        return Problem("upstream-unavailable")
    root = _root_cause(error)
    if isinstance(root, ApplicationError) and root.type in APPLICATION_ERROR_TYPE:
        code = APPLICATION_ERROR_TYPE[root.type]
        reason = root.type if code == "order-rejected" else ""
        return Problem(code, root.message, extensions=rejection_reason(reason))
    if isinstance(root, TemporalTimeoutError):
        return Problem("upstream-timeout")
    return Problem("upstream-error")
