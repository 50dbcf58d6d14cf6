"""Names the order saga uses to call payments: task queue, activities, inputs, timeouts.

Payments has no workflow of its own: its operations are single activities the
saga (workflows/orders.py) runs on `TASK_QUEUE`, e.g.

    payment_id = payment_id_for(auth_key)          # known before authorizing
    compensations.append(lambda: workflow.execute_activity_method(
        PaymentsActivities.void, VoidInput(f"{auth_key}:void", payment_id),
        task_queue=TASK_QUEUE, start_to_close_timeout=STEP_TIMEOUT))
    await workflow.execute_activity_method(
        PaymentsActivities.authorize, AuthorizeInput(auth_key, order_id, amount, "EUR", token),
        task_queue=TASK_QUEUE, start_to_close_timeout=AUTHORIZE_TIMEOUT,
        schedule_to_close_timeout=AUTHORIZE_BUDGET, retry_policy=PSP_RETRY)
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from activities.payments import (
    AuthorizeInput,
    AuthorizeResult,
    CaptureInput,
    CaptureResult,
    PaymentsActivities,
    RefundInput,
    RefundResult,
    VoidInput,
    VoidResult,
    payment_id_for,
)

__all__ = [
    "AUTHORIZE_BUDGET",
    "AUTHORIZE_TIMEOUT",
    "FAILURE_TYPES",
    "PSP_RETRY",
    "STEP_TIMEOUT",
    "TASK_QUEUE",
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

TASK_QUEUE = "agora-payments"
# The simulated slow card answers after AGORA_PAYMENTS_PSP_SLOW_DELAY_S (15 s by
# default), beyond this: the saga sees a timeout and compensates with a void.
AUTHORIZE_TIMEOUT = timedelta(seconds=10)
STEP_TIMEOUT = timedelta(seconds=10)
# Transient PSP failures (type PspUnavailable, the flaky card) are retried
# quickly; business rejections are non-retryable whatever this says.
PSP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
)
# An authorization's whole budget (schedule-to-close), its retries included: a timeout
# is retried too, and the slow card times out on every attempt (the PSP holds its
# authorization and answers it late each time), so without it the caller would never
# see the failure and void. Time, not a count of attempts, as the saga's (orders.py):
# a fast failure (payments' database restarting) is retried through a short outage.
AUTHORIZE_BUDGET = 3 * AUTHORIZE_TIMEOUT
# ApplicationError types payments' activities fail with (non-retryable unless noted).
FAILURE_TYPES = (
    "PaymentDeclined",
    "PaymentRequiresAction",
    "PaymentAmountExceeded",
    "PaymentStateConflict",
    "IdempotencyKeyConflict",
    "PaymentNotFound",
    "InvalidPaymentRequest",
    "PspUnavailable",  # retryable
)
