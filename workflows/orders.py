"""The order saga (DESIGN §3) and the refund workflow, run by the orders worker.

`OrderWorkflow` prices the lines (catalog), reserves stock (inventory),
authorizes the payment (payments), confirms the order, captures the payment and
commits the stock. Each step with an effect registers its compensation before
it runs; a failure or a cancel runs the compensations in reverse (refund, void,
release). The gateway starts it with Update-With-Start (`accept`), so the client
learns at once whether the order was accepted (priced) or rejected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeGuard, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from activities.inventory import (
        CommitInput,
        ReleaseInput,
        ReserveInput,
        RestockInput,
        StockLine,
    )
    from activities.orders import (
        ORDER_ALREADY_PLACED,
        PRICING_UNAVAILABLE,
        PSP_SILENT,
        OrdersActivities,
        OrderSnapshot,
        PricedLine,
        PricedOrder,
        PriceInput,
        RecordOrderInput,
        RecordRefundInput,
        TransitionInput,
        UnrecordedEnd,
    )
    from workers.orders.model import (
        CUSTOMER_ID,
        INVENTORY_QUEUE,
        ITEM_COUNT,
        KEY_REUSED,
        ORDER_ID,
        ORDER_STATUS,
        ORDER_TOTAL,
        PAYMENT_OUTCOME,
        PAYMENTS_QUEUE,
        TASK_QUEUE,
        CancelInput,
        CompletePaymentInput,
        OrderInput,
        OrderView,
        RefundOrderInput,
        cancel_refund,
        highest_total_accepted,
        order_id_for,
        order_workflow_id,
        refund_workflow_id,
        request_digest,
    )
    from workers.payments.model import (
        AuthorizeInput,
        CaptureInput,
        RefundInput,
        RefundResult,
        VoidInput,
        payment_id_for,
    )

# The saga's inputs and answers live in workers.orders.model (see there why);
# re-exported here for the gateway and the tests.
__all__ = [
    "INVENTORY_QUEUE",
    "KEY_REUSED",
    "PAYMENTS_QUEUE",
    "PAYMENT_ROUNDS",
    "TASK_QUEUE",
    "CancelInput",
    "CompletePaymentInput",
    "OrderInput",
    "OrderView",
    "OrderWorkflow",
    "RefundOrderInput",
    "RefundOrderWorkflow",
    "cancel_refund",
    "order_id_for",
    "order_workflow_id",
    "refund_workflow_id",
    "request_digest",
]

# Business rejections: retrying cannot help, the saga compensates at once.
NON_RETRYABLE = [
    "OutOfStock",
    "UnknownSku",
    "InvalidQuantity",
    "PaymentDeclined",
    "PaymentRequiresAction",
    "InvalidPaymentRequest",
    "IdempotencyKeyConflict",
    "ProductUnavailable",
    "InvalidOrder",
    ORDER_ALREADY_PLACED,
]


class Rejected(Exception):
    """The saga ends REJECTED for `reason` (a RejectionReason name)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RoundsCapped(Rejected):
    """The payment still asked for the customer's step after PAYMENT_ROUNDS attempts."""


class CancelRequested(Exception):
    pass


class PlacedBefore(Exception):
    """The key's order was placed by another run, which has ended (ORDER_ALREADY_PLACED)."""


class CancelledAfterStep(asyncio.CancelledError):
    """Cancelled in Temporal while a remote step ran, which `remote` then ran to its end
    and which took effect (one whose run to its end failed raises CancelledStepFailed).
    `result`: the step's result, for a caller that records what it did (a refund's amount)."""

    def __init__(self, result: object = None) -> None:
        super().__init__()
        self.result = result


class CancelledStepFailed(asyncio.CancelledError):
    """Cancelled in Temporal while a remote step ran, whose run to its end then failed
    for good: the step took no effect."""


LOCAL_TIMEOUT = timedelta(seconds=10)
# The transitions that end the order: one cut short by a cancel is run to its end.
LAST_TRANSITIONS = ("CANCELLED", "REJECTED")
# Who cancels, and why, when the cancel was requested in Temporal itself.
TEMPORAL_CANCEL = CancelInput(requested_by="temporal", reason="cancelled in Temporal")
# Versioning (workflow.patched): since this change a payment outcome is upserted with
# the next status transition instead of on its own, three upserts per order, not five.
# Sagas started before it replay their separate upserts.
MERGED_UPSERTS = "merged-search-attribute-upserts"
# Since this change a compensating refund's amount reaches the order's projection
# with its CANCELLED or REJECTED transition (before, refunded_minor stayed 0), and a
# capture that fails for good compensates and rejects the order (before, the
# workflow failed with its payment held and its stock reserved).
COMPENSATION_FOLLOW_UP = "compensating-refund-recorded-capture-failure-compensated"
# Since this change a refund after completion is recorded before the cancel's
# restock, so a restock that fails cannot leave a refunded order looking unpaid back.
REFUND_RECORDED_FIRST = "refund-recorded-before-restock"
# Since this change the authorizations a 3-D-Secure round replaced are voided once
# a later one succeeds (before, only a failing saga voided them, and a real PSP
# could keep holding the card's money for them).
VOID_SUPERSEDED = "void-superseded-authorizations"
# Since this change a wait for the customer's payment step ends before the stock
# reservation expires (before, rounds of 3-D Secure could outlast it: the order was
# then charged, failed to commit its stock and was refunded).
PAYMENT_WAIT_WITHIN_RESERVATION = "payment-wait-within-reservation"
# Since this change a cancel that arrives during the saga's last steps (the stock
# commit, the COMPLETED transition), which do not stop, cancels the completed order
# in the saga itself: everything refunded, the stock returned, the order CANCELLED.
# Before, the update answered COMPLETED and only the gateway went on to cancel it.
CANCEL_AFTER_LAST_STEPS = "cancel-after-last-steps"
# Since this change a cancel requested in Temporal itself (the web UI's Cancel,
# `temporal workflow cancel`) undoes the saga as a customer's cancel does: the step
# it interrupted is run to its end (its attempt may still take effect: the services'
# activities do not heartbeat, so they never hear of the cancel), the compensations
# run, the order is recorded CANCELLED, and the run ends cancelled. Before, it
# mistook the interrupted step for a failure for good (a capture's refund was
# dropped: the customer was charged for a REJECTED order), or ended with nothing
# undone (waiting for a 3-D Secure step: the authorization and the stock held).
TEMPORAL_CANCEL_COMPENSATES = "temporal-cancel-compensates"
# Since this change the reservation's life is measured from its `expires_at` as
# inventory recorded it (the first, committed reserve attempt), not from when the
# reserve step completed: a reserve whose completion was lost and retried for
# minutes let the payment wait outlast the reservation (the order was then
# charged, failed to commit and was refunded). And an order whose reservation is
# about to lapse once it is paid is rejected before the capture (voided, not
# charged and refunded). One whose capture outlasts what is left (payments down for
# longer) is still charged, fails its commit and is refunded: see RESERVATION_MARGIN_S.
RESERVATION_EXPIRY_FROM_INVENTORY = "reservation-expiry-from-inventory"
# Since this change a cancel requested in Temporal once the stock commit succeeded
# (during the commit, which `remote` runs to its end, or during the COMPLETED
# transition) cancels the completed order as a customer's cancel of it does: the
# COMPLETED transition recorded, then everything refunded under the key `cancel` and
# the stock restocked under the `cancel-restock` keys (the gateway's cancel of the
# same order meets it: each step answers the first one's result), the order
# CANCELLED. Before, the compensations ran: the money was refunded but release, a
# no-op on a committed reservation, returned no stock, and a cancel that cut the
# COMPLETED transition short left the order COMPLETED (the CANCELLED transition was
# refused) with its money refunded. Asked only on that path.
TEMPORAL_CANCEL_AFTER_COMMIT = "temporal-cancel-after-commit-restocks"
# Since this change a saga rejected before its order is recorded (at pricing: a
# catalog outage, a price changed, a product unavailable) is counted in the saga
# outcome metric by a local activity, `orders.count_unrecorded`; before, only recorded
# orders' transitions were, and a catalog outage rejecting every order paged no one.
UNRECORDED_COUNTED = "unrecorded-rejections-counted"
# Since this change a payment that asks for the customer's step (3-D Secure) a
# PAYMENT_ROUNDS-th time rejects the order (voided, released) instead of waiting again.
# Each round adds an update, an authorization and its void to the run's history: a
# customer completing rounds with cards that always ask again could drive the run to
# Temporal's per-workflow limits (2000 updates, 50,000 events), where it is
# terminated with its authorizations and its stock held. Asked only when the cap is
# reached, so an order paid within it records no marker.
PAYMENT_ROUNDS_CAPPED = "payment-rounds-capped"
PAYMENT_ROUNDS = 5
# Since this change the round cap rejects the order as PAYMENT_DECLINED (the card's
# issuer keeps asking: the customer's outcome, upserted as the payment outcome
# `declined`); before, PAYMENT_FAILED. Asked only when a capped saga has compensated
# (see _rounds_cap_declines, which also keeps the runs of b9d9329, declined unpatched,
# replayable).
PAYMENT_ROUNDS_DECLINED = "payment-rounds-capped-declined"
# Since this change a cancel requested in Temporal that cuts one of the saga's own
# writes short (`orders.record`, or the CANCELLED or REJECTED transition that ends the
# order) runs that local activity again to its end, by its key, as `remote` does for
# another service's step: the order is recorded as it ended (one whose record was cut
# short is then cancelled, with nothing else done). Before, the cancel escaped the run
# and the order stayed PENDING in the projection for ever. Asked only on that path.
OWN_WRITES_TO_THEIR_END = "temporal-cancel-finishes-own-writes"
# Since this change a void of an authorization a 3-D Secure round replaced that fails
# for good (the PSP refusing it) is logged, as a compensation's failure is, and the
# order goes on; before, the workflow failed with the later authorization held, the
# stock reserved and the order PENDING for ever. Asked only when such a void fails.
SUPERSEDED_VOID_FAILURE_LOGGED = "superseded-void-failure-logged"
# Since this change a cancel requested in Temporal during the saga's cancel of its
# completed order (the refund, its record, the restocks) runs that cancel again from a
# fresh snapshot by the same keys, so every line is restocked and the refund recorded,
# and the run ends cancelled; before, the failure was logged as the cancel's refusal
# and the lines not yet restocked were lost. Asked only on that path.
CANCEL_OF_COMPLETED_TO_ITS_END = "temporal-cancel-finishes-cancel-of-completed"
# Since this change a cancel requested in Temporal while the order is priced ends the
# run cancelled with nothing recorded, reserved or counted; before, it was mapped to
# PRICING_UNAVAILABLE and counted as a failed saga. Asked only on that path.
TEMPORAL_CANCEL_AT_PRICING = "temporal-cancel-at-pricing"
# Since this change a cancel requested in Temporal that cuts short the count of a saga
# rejected before its order was recorded (`orders.count_unrecorded`) runs the count again
# to its end, as OWN_WRITES_TO_THEIR_END does for the saga's other closing writes: the
# saga ends REJECTED, and `accept` answers the rejection. Before, the cancel escaped the
# run, which ended cancelled with `accept` unanswered (the POST got a 502) and the
# rejection uncounted. Asked only on that path.
UNRECORDED_COUNT_TO_ITS_END = "temporal-cancel-finishes-unrecorded-count"
# Since this change a cancel requested in Temporal that cuts one of RefundOrder's steps
# short (the refund at payments, its record, a cancel's restock of a line) runs that step
# again to its end by its key, then the steps left, and the run completes with the order
# as they left it: the refund recorded, every line of a cancel restocked. It completes,
# not cancelled, since the work the cancel interrupted was done: the gateway starts a
# new run for a retry with the same Idempotency-Key only after a run that did not
# complete, and that run would find the refund recorded and refuse it (NotRefundable,
# RefundAmountInvalid) though the money was refunded. Before, the refund could stay
# unrecorded, or the order CANCELLED with lines never restocked, which every retry
# refused (NotRefundable). Asked only on that path.
REFUND_TO_ITS_END = "temporal-cancel-finishes-refund"
# Since this change a cancel's RefundOrder that finds the order CANCELLED by a cancel
# after completion (its refund recorded; its restock maybe cut short: a run terminated,
# a restock refused for good, a run cancelled in Temporal before REFUND_TO_ITS_END)
# restocks every line by the same keys, each a no-op if done, instead of failing
# NotRefundable. Asked only on that path.
CANCELLED_RESTOCKED_AGAIN = "cancelled-order-restocked-again"
# How long after the cancel was recorded its restock may be run again: inventory keeps
# a restock's key for 30 days (workers/inventory/idempotency.py RETENTION_DAYS); past
# that, a line restocked already would be restocked twice.
RESTOCK_AGAIN_WITHIN = timedelta(days=7)
# Since this change the saga's cancel of its completed order after a cancel requested
# in Temporal (cancel_committed_order), whose refund payments refused for an amount
# that no longer fits (a partial refund landed first), runs once more from a fresh
# snapshot, asking payments for whatever is left (amount None: a partial refund made at
# payments but not yet recorded in the orders projection is missing from the snapshot):
# the rest refunded under the same key `cancel` (payments keeps no record of a refused
# refund), the stock restocked, the order CANCELLED. Before, the refusal was
# only logged: no gateway follows that cancel up, and the order stayed COMPLETED or
# PARTIALLY_REFUNDED with its stock never returned. Asked only on that path.
REFUSED_CANCEL_RETRIED = "temporal-cancel-retries-refused-refund"
# Since this change a cancel requested in Temporal that comes in the workflow task
# also holding a step's outcome (the step ended, then the cancel came, before a worker
# took the next task: an operator cancelling a saga that looks stuck while its worker
# is down) is taken as cutting that step short, as one that comes while it runs is:
# temporalio raises a bare asyncio.CancelledError at the step's await there, its
# outcome dropped (RAISE_ON_CANCELLING_COMPLETED_ACTIVITY), not an ActivityError. Before,
# no "to its end" path saw it: a committed order was compensated with a release (no
# stock returned), a cancel's refund was left unrecorded, its lines unrestocked.
# Asked only on that path (_outcome_dropped).
CANCEL_WITH_STEP_OUTCOME = "temporal-cancel-with-step-outcome"
# A card token payments' PSP does not know (InvalidPaymentRequest, details
# ["card_token"]): the customer's decline (PAYMENT_DECLINED), not PAYMENT_FAILED, which
# counts as the platform's failure and pages (OrderSagaFailureRatioHigh): any customer
# could trip it with made-up tokens. The gateway cannot check a token (only the PSP
# knows its tokens). Asked only on that path.
CARD_TOKEN_REFUSED_DECLINES = "card-token-refused-declines"
# A cancel requested in Temporal during the payment wait (3-D Secure) leaves the view
# PENDING without the PSP's link at once, not AWAITING_PAYMENT until the compensations
# end. Asked only on that path.
PAYMENT_WAIT_CANCEL_CLEARS = "payment-wait-cancel-clears"
# A capture cancelled in Temporal whose run to its end was refused for good captured
# nothing: its refund compensation is dropped (one activity fewer), as for a capture
# refused without a cancel. Run, it was refused too, and the order's reason said
# "refund payment failed", which tells support the customer may have been charged.
# Asked only on that path.
CANCELLED_CAPTURE_REFUSED = "cancelled-capture-refused-no-refund"
# What the saga needs after the payment, of the reservation's life: capture, commit,
# as they run when payments and inventory answer. A payments outage longer than what
# is left still outlasts the reservation: the capture is not bounded by it, since a
# capture given up may have taken effect at the PSP all the same, and the compensation
# of a failed capture voids, it does not refund. The order is then charged, fails to
# commit its stock (ReservationNotHeld) and is refunded: slow, but no money is kept.
RESERVATION_MARGIN_S = 60
# A payment provider that does not answer is given up after about this many attempts'
# worth of time (then voided). The limit is time, not a count of attempts: errors that
# fail fast (our database or Redis restarting, a flaky PSP) are retried with backoff
# through an outage of several seconds instead of rejecting an accepted order.
PSP_TRIES = 3
_REMOTE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=NON_RETRYABLE,
)


@workflow.defn(name="Order")
class OrderWorkflow:
    @workflow.init
    def __init__(self, order: OrderInput) -> None:
        # The input is known before any handler runs: `accept`'s validator needs it.
        self.view = OrderView(
            order_id="",
            status="RECEIVED",
            request_digest=request_digest(order.lines, order.currency, order.expected_total_minor),
        )
        self.priced: PricedOrder | None = None
        self.cancel: CancelInput | None = None
        self.payment_completion: CompletePaymentInput | None = None
        self.finished = False
        self.compensations: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        # The compensations that failed for good, named in the closing reason.
        self.compensations_failed: list[str] = []
        # A payment outcome not yet upserted (it goes with the next transition's).
        self.outcome_unsaved = False
        # What a compensation refunded, for the closing transition.
        self.compensated_refund_minor = 0
        self.reserved_at = workflow.now()
        # When inventory lets the reservation lapse (its reserve result), once known.
        self.reserved_until: datetime | None = None
        # A cancel requested in Temporal came (TEMPORAL_CANCEL_COMPENSATES).
        self.cancelled_in_temporal = False
        # The stock commit succeeded (no release can return it now), and the COMPLETED
        # transition that follows it was recorded.
        self.stock_committed = False
        self.completed_recorded = False
        # Each authorization attempt's void, by its idempotency key.
        self.authorization_voids: dict[str, Callable[[], Awaitable[object]]] = {}

    # Queries and updates -------------------------------------------------

    @workflow.query
    def status(self) -> OrderView:
        return self.view

    @workflow.update
    async def accept(self, digest: str = "") -> OrderView:
        """Answers once the order is priced (accepted) or rejected: the POST's answer.
        `digest`: what this POST asked for (request_digest)."""
        await workflow.wait_condition(lambda: self.priced is not None or self.finished)
        if self.priced is None:
            raise ApplicationError(self.view.reason, type=self.view.rejection, non_retryable=True)
        return self.view

    @accept.validator
    def _validate_accept(self, digest: str = "") -> None:
        if digest and digest != self.view.request_digest:
            raise ApplicationError(KEY_REUSED, type="IdempotencyKeyReused")

    @workflow.update
    async def cancel_order(self, request: CancelInput) -> OrderView:
        self.cancel = request
        await workflow.wait_condition(lambda: self.finished)
        return self.view

    @cancel_order.validator
    def _validate_cancel(self, request: CancelInput) -> None:
        self._for_this_order(request.order_id)
        if self.finished:
            raise ApplicationError(
                f"the order is already {self.view.status.lower()}", type="OrderFinished"
            )

    @workflow.update
    async def complete_payment(self, request: CompletePaymentInput) -> OrderView:
        self.payment_completion = request
        await workflow.wait_condition(lambda: self.view.status != "AWAITING_PAYMENT")
        return self.view

    @complete_payment.validator
    def _validate_completion(self, request: CompletePaymentInput) -> None:
        self._for_this_order(request.order_id)
        if self.view.status != "AWAITING_PAYMENT":
            raise ApplicationError("the order is not waiting for a payment", type="NotAwaiting")

    @staticmethod
    def _for_this_order(order_id: str) -> None:
        """Refuse an update whose input names another order (or none). The codec's
        encryption proves a payload was written by a holder of the key ring, not which
        run it was for: a cancel or a card token copied from another order's history
        (with the rights to read histories and send updates, not the key) would act
        here. Validators do not run on replay: updates accepted before the field
        existed replay as they ran."""
        if order_workflow_id(order_id) != workflow.info().workflow_id:
            raise ApplicationError("this update is for another order", type="WrongOrder")

    # The saga ---------------------------------------------------------------

    @workflow.run
    async def run(self, order: OrderInput) -> OrderView:
        self.view.order_id = order.order_id
        self.view.currency = order.currency
        try:
            self.priced = await self.price(order)
        except Rejected as rejected:
            return await self.finish(await self.finish_rejected(order, rejected, recorded=False))
        except PlacedBefore as placed:
            # A POST retried once Temporal no longer holds the key's first run (past the
            # namespace's retention): `accept` refuses it (the gateway answers the order
            # as recorded), and this second saga fails having done nothing.
            self.view.rejection, self.view.reason = ORDER_ALREADY_PLACED, str(placed)
            await self.finish(self.view)
            raise ApplicationError(
                str(placed), type=ORDER_ALREADY_PLACED, non_retryable=True
            ) from None
        self.view.status = "PENDING"
        self.view.total_minor = self.priced.total_minor
        self.view.lines = list(self.priced.lines)
        self.upsert_search_attributes(order)
        try:
            await self.record_order(order)
            await self.reserve_stock(order)
            await self.authorize_payment(order)
            self.check_cancel()
            self.check_reservation()
            await self.transition(order, "CONFIRMED")
            await self.capture_payment(order)
            await self.commit_stock(order)
            await self.transition(order, "COMPLETED")
            self.completed_recorded = True
            if self.cancel is not None and workflow.patched(CANCEL_AFTER_LAST_STEPS):
                await self.cancel_completed(order, self.cancel)
        except Rejected as rejected:
            await self.compensate()
            return await self.finish(await self.finish_rejected(order, rejected, recorded=True))
        except CancelRequested:
            await self.compensate()
            assert self.cancel is not None
            self.set_reason(self.cancel.reason)
            await self.transition(order, "CANCELLED", cancelled_by=self.cancel.requested_by)
        except (asyncio.CancelledError, ActivityError) as error:
            # A cancel requested in Temporal: a wait or a remote step raises
            # asyncio.CancelledError (see remote), an own local step ActivityError.
            if isinstance(error, ActivityError) and not _cancelled(error):
                raise
            if not workflow.patched(TEMPORAL_CANCEL_COMPENSATES):
                raise
            if self.stock_committed and workflow.patched(TEMPORAL_CANCEL_AFTER_COMMIT):
                await self.cancel_committed_order(order)
            else:
                await self.compensate()
                self.set_reason(TEMPORAL_CANCEL.reason)
                await self.transition(order, "CANCELLED", cancelled_by=TEMPORAL_CANCEL.requested_by)
            self.cancelled_in_temporal = True
        if self.cancelled_in_temporal:
            self.finished = True
            raise asyncio.CancelledError
        return await self.finish(self.view)

    async def finish(self, view: OrderView) -> OrderView:
        """The end: let the updates in flight (accept, cancel) answer before the run closes."""
        self.finished = True
        await workflow.wait_condition(workflow.all_handlers_finished)
        return view

    async def price(self, order: OrderInput) -> PricedOrder:
        # A local activity's retry policy is not recorded in history: sagas started
        # before the attempts were bounded replay the same (a price's outcome comes
        # from its marker).
        try:
            priced = await workflow.execute_local_activity_method(
                OrdersActivities.price,
                PriceInput(order.lines, order.currency, order.order_id),
                retry_policy=RetryPolicy(
                    maximum_interval=timedelta(seconds=10),
                    maximum_attempts=order.pricing_attempts,
                    non_retryable_error_types=NON_RETRYABLE,
                ),
                start_to_close_timeout=LOCAL_TIMEOUT,
            )
        except (ActivityError, ApplicationError) as error:
            if _cancelled(error) and workflow.patched(TEMPORAL_CANCEL_AT_PRICING):
                raise asyncio.CancelledError from None  # not a catalog outage: nothing to count
            cause = error.cause if isinstance(error, ActivityError) else error
            if isinstance(cause, ApplicationError) and cause.type == ORDER_ALREADY_PLACED:
                raise PlacedBefore(cause.message) from None
            rejected = _rejection(error, PRICING_UNAVAILABLE)
            if rejected.reason == PRICING_UNAVAILABLE:
                # Catalog did not answer (its own message may hold internals).
                raise Rejected(
                    PRICING_UNAVAILABLE,
                    f"the catalog could not price the order ({order.pricing_attempts}"
                    " attempts); nothing was reserved or charged: place it again with a"
                    " new Idempotency-Key",
                ) from None
            raise rejected from None
        check_expected_total(order, priced)
        return priced

    async def record_order(self, order: OrderInput) -> None:
        assert self.priced is not None
        record = RecordOrderInput(
            order.order_id, order.customer_id, order.idempotency_key, self.priced
        )
        if await _to_its_end(
            lambda: workflow.execute_local_activity_method(
                OrdersActivities.record, record, start_to_close_timeout=LOCAL_TIMEOUT
            )
        ):
            raise asyncio.CancelledError  # recorded: now cancelled as it was asked (see run)

    async def reserve_stock(self, order: OrderInput) -> None:
        self.check_cancel()
        reservation_id = f"order-{order.order_id}"
        self.register(
            "release stock",
            lambda: self.remote(
                "inventory.release", ReleaseInput(reservation_id, "compensation"), INVENTORY_QUEUE
            ),
        )
        try:
            reserved = await self.remote(
                "inventory.reserve",
                ReserveInput(
                    reservation_id=reservation_id,
                    lines=[StockLine(x.sku, x.quantity) for x in order.lines],
                    ttl_seconds=order.reservation_ttl_s,
                    order_id=order.order_id,
                ),
                INVENTORY_QUEUE,
            )
        except ActivityError as error:
            raise _rejection(error, "OUT_OF_STOCK") from None
        self.view.reservation_id = reservation_id
        self.reserved_at = workflow.now()
        self.reserved_until = _expires_at(reserved)

    async def authorize_payment(self, order: OrderInput) -> None:
        token, attempt = order.card_token, 1
        while True:
            self.check_cancel()
            key = f"{order.order_id}:authorize:{attempt}"
            payment_id = payment_id_for(key)
            void = self.void_later(key, payment_id)
            self.authorization_voids[key] = void
            self.register("void payment", void)
            try:
                assert self.priced is not None
                await self.remote(
                    "payments.authorize",
                    AuthorizeInput(
                        idempotency_key=key,
                        order_id=order.order_id,
                        amount_minor=self.priced.total_minor,
                        currency=order.currency,
                        card_token=token,
                        customer_id=order.customer_id,
                    ),
                    PAYMENTS_QUEUE,
                    timeout_s=order.payment_step_timeout_s,
                    budget_s=order.payment_step_timeout_s * PSP_TRIES,
                )
            except ActivityError as error:
                cause = error.cause
                if isinstance(cause, ApplicationError) and cause.type == "PaymentRequiresAction":
                    if attempt >= PAYMENT_ROUNDS and workflow.patched(PAYMENT_ROUNDS_CAPPED):
                        # The card's issuer keeps asking (or the customer cannot
                        # pass its check): a decline, the customer's outcome.
                        raise RoundsCapped(
                            "PAYMENT_DECLINED",
                            f"the payment still asked for the customer's step after"
                            f" {PAYMENT_ROUNDS} attempts",
                        ) from None
                    token = await self.wait_for_payment(order, cause)
                    attempt += 1
                    continue
                if isinstance(cause, ActivityTimeout):
                    raise Rejected("PAYMENT_TIMEOUT", PSP_SILENT) from None
                if _card_token_refused(cause) and workflow.patched(CARD_TOKEN_REFUSED_DECLINES):
                    raise Rejected("PAYMENT_DECLINED", cause.message) from None
                raise _rejection(error, "PAYMENT_FAILED") from None
            self.view.payment_id = payment_id
            self.set_payment_outcome("authorized")
            if attempt > 1 and workflow.patched(VOID_SUPERSEDED):
                await self.void_superseded(order, attempt)
            return

    async def void_superseded(self, order: OrderInput, attempt: int) -> None:
        """Void the attempts before `attempt` (each asked for the customer's extra step)
        now, not only if the saga fails; their compensations are then done."""
        superseded = [
            self.authorization_voids[f"{order.order_id}:authorize:{n}"] for n in range(1, attempt)
        ]
        for void in superseded:
            try:
                await void()
            except ActivityError as error:
                if not workflow.patched(SUPERSEDED_VOID_FAILURE_LOGGED):
                    raise
                # Retried by Temporal, then refused for good: as compensate() does, logged,
                # and the order goes on (the authorization that succeeded is the one to use).
                workflow.logger.error(
                    "void of a replaced authorization failed", extra={"error": str(error.cause)}
                )
        self.compensations = [(n, undo) for n, undo in self.compensations if undo not in superseded]

    def void_later(self, key: str, payment_id: str) -> Callable[[], Awaitable[object]]:
        """The compensation of one authorization attempt (bound now, run maybe later)."""
        return lambda: self.remote(
            "payments.void", VoidInput(f"{key}:void", payment_id), PAYMENTS_QUEUE
        )

    async def wait_for_payment(self, order: OrderInput, cause: ApplicationError) -> str:
        """The payment needs the customer (3-D Secure): wait, but not forever."""
        details = list(cause.details)
        self.view.next_action_url = str(details[1]) if len(details) > 1 else ""
        self.view.status = "AWAITING_PAYMENT"
        self.set_payment_outcome("requires_action", status=self.view.status)
        self.payment_completion = None
        timeout_s = float(order.payment_timeout_s)
        if workflow.patched(PAYMENT_WAIT_WITHIN_RESERVATION):
            held_s = (workflow.now() - self.reserved_at).total_seconds()
            timeout_s = min(timeout_s, order.reservation_ttl_s - RESERVATION_MARGIN_S - held_s)
        if self.reserved_until is not None and workflow.patched(RESERVATION_EXPIRY_FROM_INVENTORY):
            left_s = (self.reserved_until - workflow.now()).total_seconds()
            timeout_s = min(timeout_s, left_s - RESERVATION_MARGIN_S)
        try:
            if timeout_s <= 0:
                raise TimeoutError
            await workflow.wait_condition(
                lambda: self.payment_completion is not None or self.cancel is not None,
                timeout=timedelta(seconds=timeout_s),
            )
        except TimeoutError:
            self.view.status, self.view.next_action_url = "PENDING", ""
            self.set_payment_outcome("timeout")
            raise Rejected("PAYMENT_TIMEOUT", "the order was not paid in time") from None
        except asyncio.CancelledError:
            # Cancelled in Temporal: the order no longer awaits the customer, and no
            # status or link says it does while the saga compensates. Behind a patch:
            # `complete_payment` waits for the status to leave AWAITING_PAYMENT, so an
            # update accepted meanwhile now ends earlier than runs before recorded.
            if workflow.patched(PAYMENT_WAIT_CANCEL_CLEARS):
                self.view.status, self.view.next_action_url = "PENDING", ""
            raise
        self.view.status, self.view.next_action_url = "PENDING", ""
        self.check_cancel()
        assert self.payment_completion is not None
        return self.payment_completion.card_token

    async def capture_payment(self, order: OrderInput) -> None:
        self.check_cancel()
        payment_id = self.view.payment_id
        self.register("refund payment", lambda: self.refund_capture(order, payment_id))
        try:
            await self.remote(
                "payments.capture",
                CaptureInput(f"{order.order_id}:capture", payment_id),
                PAYMENTS_QUEUE,
            )
        except ActivityError as error:
            # Only a failure for good gets here (transient ones are retried).
            if not workflow.patched(COMPENSATION_FOLLOW_UP):
                raise
            self.compensations.pop()  # nothing was captured: nothing to refund
            raise _rejection(error, "PAYMENT_FAILED") from None
        except CancelledStepFailed:
            if workflow.patched(CANCELLED_CAPTURE_REFUSED):
                self.compensations.pop()  # nothing was captured: nothing to refund
            raise
        self.set_payment_outcome("captured")

    async def refund_capture(self, order: OrderInput, payment_id: str) -> None:
        try:
            refund = await self.remote(
                "payments.refund",
                RefundInput(f"{order.order_id}:compensation-refund", payment_id, None, "saga"),
                PAYMENTS_QUEUE,
            )
        except CancelledAfterStep as cancelled:
            # Refunded all the same: the closing transition carries it. No patch: no
            # command changes, only that transition's input, which replay does not compare.
            self.compensated_refund_minor = _amount_minor(cancelled.result)
            raise
        if workflow.patched(COMPENSATION_FOLLOW_UP):
            self.compensated_refund_minor = _amount_minor(refund)

    async def commit_stock(self, order: OrderInput) -> None:
        self.check_cancel()  # the last moment a cancel is a compensation, not a refund
        try:
            await self.remote(
                "inventory.commit", CommitInput(self.view.reservation_id), INVENTORY_QUEUE
            )
        except ActivityError as error:
            raise _rejection(error, "OUT_OF_STOCK") from None
        except CancelledAfterStep:
            self.stock_committed = True  # cancelled in Temporal, committed all the same
            raise
        self.stock_committed = True

    async def cancel_completed(
        self,
        order: OrderInput,
        cancel: CancelInput,
        *,
        restock_if_cancelled: bool = False,
        retry_refused: bool = False,
    ) -> None:
        """A cancel that came during the last steps: cancel the completed order as the
        gateway's cancel of a completed order does (the same keys, so the two can meet:
        each step answers the first one's result). `restock_if_cancelled`: an order found
        CANCELLED already gets its restock too (by the same keys: a no-op if whoever
        cancelled it restocked), as a cancel cut short after its refund was recorded
        has not restocked yet. `retry_refused`: no gateway follows a failed cancel up, so
        a refund refused for its amount is asked once more (REFUSED_CANCEL_RETRIED); a
        cancel now asks payments for what it has left (refund_completed), so only a run
        that asked for an amount before is refused so."""
        snapshot = await _snapshot(order.order_id)
        if snapshot.status == "CANCELLED" and restock_if_cancelled:
            await restock_cancelled(order.order_id, snapshot.lines)
        elif snapshot.status in REFUNDABLE:
            try:
                snapshot = await refund_completed(cancel_refund(order.order_id, cancel), snapshot)
            except asyncio.CancelledError as error:
                if not _outcome_dropped(error):
                    raise
                # As below: the step whose outcome was dropped is asked again by its key.
                self.cancelled_in_temporal = True
                await self.cancel_completed(order, cancel, restock_if_cancelled=True)
                return
            except (ActivityError, ApplicationError) as error:
                if _cancelled(error) and workflow.patched(CANCEL_OF_COMPLETED_TO_ITS_END):
                    # Cancelled in Temporal midway: the same cancel again, from what is
                    # recorded now, by the same keys (each step answers its first result).
                    self.cancelled_in_temporal = True
                    await self.cancel_completed(order, cancel, restock_if_cancelled=True)
                    return
                if (
                    retry_refused
                    and _amount_refused(error)
                    and workflow.patched(REFUSED_CANCEL_RETRIED)
                ):
                    # A partial refund landed since the snapshot, which may not show it
                    # yet (made at payments, not yet recorded): whatever payments has left.
                    await self.cancel_completed(order, cancel, restock_if_cancelled=True)
                    return
                # E.g. a partial refund landed meanwhile and the amount no longer fits.
                # The saga has completed and must not fail now: the update answers what
                # the order is, and a COMPLETED answer makes the gateway cancel it anew.
                workflow.logger.error(
                    "cancel after completion failed", extra={"error": str(error.cause or error)}
                )
                snapshot = await _snapshot(order.order_id)
        # Otherwise another request cancelled or refunded it meanwhile: its status stands.
        self.view.status = snapshot.status
        self.view.refunded_minor = snapshot.refunded_minor
        self.view.reason = cancel.reason
        workflow.upsert_search_attributes([ORDER_STATUS.value_set(snapshot.status)])

    async def cancel_committed_order(self, order: OrderInput) -> None:
        """Cancelled in Temporal once the stock was committed (TEMPORAL_CANCEL_AFTER_COMMIT):
        a release cannot return committed stock, so the order is completed (its COMPLETED
        transition run to its end, by its key, if the cancel came before or during it) and
        then cancelled as a customer's cancel of a completed order is: refunded under the
        key `cancel`, restocked under the `cancel-restock` keys, CANCELLED. A customer's
        cancel that came first (cancel_order) is the one carried out."""
        self.compensations.clear()  # the capture is refunded, the commit restocked, below
        if not self.completed_recorded:
            await self.transition(order, "COMPLETED")
            self.completed_recorded = True
        await self.cancel_completed(
            order, self.cancel or TEMPORAL_CANCEL, restock_if_cancelled=True, retry_refused=True
        )

    # Helpers ------------------------------------------------------------

    def register(self, name: str, compensation: Callable[[], Awaitable[object]]) -> None:
        """Registered before the step runs: a step that may have had an effect is undone."""
        self.compensations.append((name, compensation))

    async def compensate(self) -> None:
        for name, compensation in reversed(self.compensations):
            try:
                await compensation()
            except asyncio.CancelledError as cancelled:
                # Cancelled in Temporal during an undo step, which `remote` has run to
                # its end: the rest still run; the run ends cancelled (see run).
                if not workflow.patched(TEMPORAL_CANCEL_COMPENSATES):
                    raise
                self.cancelled_in_temporal = True
                if isinstance(cancelled, CancelledStepFailed):
                    # Its run to its end was refused for good: failed, as below (a
                    # refund refused so left the customer charged with no trace).
                    self.compensation_failed(name, "refused when run to its end after a cancel")
            except ActivityError as error:
                # Compensations are idempotent and retried by Temporal; one that still
                # fails is logged and the rest still run.
                self.compensation_failed(name, str(error.cause))
        self.compensations.clear()

    def compensation_failed(self, name: str, error: str) -> None:
        """Logged, and named in the order's reason: the customer may be charged."""
        workflow.logger.error("compensation failed", extra={"step": name, "error": error})
        self.compensations_failed.append(name)
        self.view.reason = f"{self.view.reason}; {name} failed".strip("; ")

    def set_reason(self, reason: str) -> None:
        """The order's reason, followed by the compensations that failed for good: a
        customer charged or stock held after a cancel shows in the order, not only in a log."""
        failed = [f"{name} failed" for name in self.compensations_failed]
        self.view.reason = "; ".join(filter(None, [reason, *failed]))

    def check_cancel(self) -> None:
        if self.cancel is not None:
            raise CancelRequested

    def check_reservation(self) -> None:
        """Paid, but the stock may lapse before capture and commit: reject (the payment is
        voided, never charged) rather than charge, fail the commit and refund."""
        if self.reserved_until is None:
            return
        left_s = (self.reserved_until - workflow.now()).total_seconds()
        if left_s < RESERVATION_MARGIN_S and workflow.patched(RESERVATION_EXPIRY_FROM_INVENTORY):
            raise Rejected(
                "PAYMENT_TIMEOUT", "the stock reservation ran out before the payment was complete"
            )

    async def remote(
        self,
        activity: str,
        arg: object,
        queue: str,
        *,
        timeout_s: float = 10.0,
        budget_s: float | None = None,
    ) -> object:
        """A step on another service's queue: each attempt gets `timeout_s`; retried with
        backoff until it succeeds, fails for a business reason, or `budget_s` is spent."""

        def run() -> Awaitable[object]:
            return workflow.execute_activity(
                activity,
                arg,
                task_queue=queue,
                start_to_close_timeout=timedelta(seconds=timeout_s),
                schedule_to_close_timeout=timedelta(seconds=budget_s) if budget_s else None,
                retry_policy=_REMOTE_RETRY,
            )

        try:
            return await run()
        except asyncio.CancelledError as error:
            if not _outcome_dropped(error):
                raise
        except ActivityError as error:
            if not _cancelled(error):
                raise
            if not workflow.patched(TEMPORAL_CANCEL_COMPENSATES):
                raise
        # Cancelled in Temporal while the step ran (TEMPORAL_CANCEL_COMPENSATES), or as
        # it ended (CANCEL_WITH_STEP_OUTCOME): run it to its end, by its key (idempotent,
        # serialized at its service), so the compensations undo exactly what it did.
        try:
            result = await run()
        except ActivityError:
            raise CancelledStepFailed from None
        raise CancelledAfterStep(result) from None

    async def transition(self, order: OrderInput, status: str, *, cancelled_by: str = "") -> None:
        self.view.status = status
        self.view.refunded_minor = self.compensated_refund_minor
        change = TransitionInput(
            order_id=order.order_id,
            status=status,
            key=status.lower(),
            reason=self.view.reason,
            rejection=self.view.rejection,
            reservation_id=self.view.reservation_id,
            payment_id=self.view.payment_id,
            captured_minor=self.view.total_minor if status == "COMPLETED" else 0,
            refunded_minor=self.compensated_refund_minor,
            cancelled_by=cancelled_by,
        )

        def write() -> Awaitable[None]:
            return workflow.execute_local_activity_method(
                OrdersActivities.transition, change, start_to_close_timeout=LOCAL_TIMEOUT
            )

        if status in LAST_TRANSITIONS:
            self.cancelled_in_temporal |= await _to_its_end(write)
        else:
            await write()  # a cancel here is run's to handle: it undoes the saga
        updates: list[SearchAttributeUpdate[Any]] = [ORDER_STATUS.value_set(status)]
        if self.outcome_unsaved:
            updates.append(PAYMENT_OUTCOME.value_set(self.view.payment_outcome))
            self.outcome_unsaved = False
        workflow.upsert_search_attributes(updates)

    async def finish_rejected(
        self, order: OrderInput, rejected: Rejected, *, recorded: bool
    ) -> OrderView:
        if isinstance(rejected, RoundsCapped) and not _rounds_cap_declines():
            rejected.reason = "PAYMENT_FAILED"  # a saga that reached the cap before
        self.view.rejection = rejected.reason
        self.set_reason(rejected.detail)
        if rejected.reason == "PAYMENT_DECLINED":
            self.set_payment_outcome("declined")
        if recorded:
            await self.transition(order, "REJECTED")
        else:
            self.view.status = "REJECTED"
            if workflow.patched(UNRECORDED_COUNTED):
                await self.count_unrecorded(rejected)
        self.finished = True
        return self.view

    async def count_unrecorded(self, rejected: Rejected) -> None:
        """Count a saga rejected before its order was recorded (UNRECORDED_COUNTED). A count
        cut short by a cancel requested in Temporal may have been added already: run again,
        it is then counted twice, which a rate of rejections shrugs off, where a cancel
        escaping would leave the POST unanswered."""
        end = UnrecordedEnd(rejected.reason, rejected.detail)
        await _to_its_end(
            lambda: workflow.execute_local_activity_method(
                OrdersActivities.count_unrecorded, end, start_to_close_timeout=LOCAL_TIMEOUT
            ),
            UNRECORDED_COUNT_TO_ITS_END,
        )

    def upsert_search_attributes(self, order: OrderInput) -> None:
        assert self.priced is not None
        workflow.upsert_search_attributes(
            [
                CUSTOMER_ID.value_set(order.customer_id),
                ORDER_ID.value_set(order.order_id),
                ORDER_STATUS.value_set(self.view.status),
                ORDER_TOTAL.value_set(self.priced.total_minor),
                ITEM_COUNT.value_set(sum(x.quantity for x in self.priced.lines)),
            ]
        )

    def set_payment_outcome(self, outcome: str, *, status: str = "") -> None:
        """The payment's outcome for the Temporal UI: upserted at once with a status that
        changes without a transition (AWAITING_PAYMENT, so the UI can list the orders
        waiting to be paid), otherwise with the next transition's upsert, which always
        follows (each upsert is a visibility write on the Temporal server)."""
        self.view.payment_outcome = outcome
        if self.priced is None:
            return
        if not status and workflow.patched(MERGED_UPSERTS):
            self.outcome_unsaved = True
            return
        updates = [PAYMENT_OUTCOME.value_set(outcome)]
        if status:
            updates.append(ORDER_STATUS.value_set(status))
        workflow.upsert_search_attributes(updates)


def check_expected_total(order: OrderInput, priced: PricedOrder) -> None:
    """The customer was shown a total (the cart's): prices risen beyond the tolerance
    reject the order (PRICE_CHANGED) before anything is recorded, reserved or charged.
    Workflow code on the input and the price step's result, with no command of its own:
    a saga without an expected total (every one started before it) never takes the
    branch, and one with it replays as it ran, so no patch is needed."""
    expected = order.expected_total_minor
    if expected is None:
        return
    if priced.total_minor <= highest_total_accepted(expected, order.price_tolerance_bps):
        return  # as shown, within the tolerance, or lower (charged the lower total)
    raise Rejected(
        "PRICE_CHANGED",
        f"the prices changed: the order now comes to {priced.total_minor}, more than the"
        f" {expected} you were shown ({order.currency} minor units); nothing was reserved"
        " or charged: review the order and place it again with a new Idempotency-Key",
    )


def _amount_minor(result: object) -> int:
    """`amount_minor` of an untyped activity result (a remote step's, as decoded JSON)."""
    if isinstance(result, dict):
        return int(result.get("amount_minor") or 0)
    return int(getattr(result, "amount_minor", 0) or 0)


def _expires_at(reserved: object) -> datetime | None:
    """The reservation's expiry from inventory's answer (a ReserveResult as a dict)."""
    expires = reserved.get("expires_at") if isinstance(reserved, dict) else None
    if not isinstance(expires, str) or not expires:
        return None
    when = datetime.fromisoformat(expires)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _rounds_cap_declines() -> bool:
    """The round cap is a decline (PAYMENT_ROUNDS_DECLINED), asked once the saga has
    compensated, where runs of b9d9329 (the decline without its patch) asked
    MERGED_UPSERTS first (for the payment outcome `declined`): replaying one finds that
    marker here. A run that reached the cap before either has neither: PAYMENT_FAILED."""
    return workflow.patched(PAYMENT_ROUNDS_DECLINED) or workflow.patched(MERGED_UPSERTS)


def _amount_refused(error: ActivityError | ApplicationError) -> bool:
    """Payments refused the refund for good: more than is captured and not refunded."""
    cause = error.cause if isinstance(error, ActivityError) else error
    return isinstance(cause, ApplicationError) and cause.type == "PaymentAmountExceeded"


def _card_token_refused(cause: BaseException | None) -> TypeGuard[ApplicationError]:
    """Payments refused the authorization's card token as none of its PSP's."""
    return (
        isinstance(cause, ApplicationError)
        and cause.type == "InvalidPaymentRequest"
        and list(cause.details[:1]) == ["card_token"]
    )


def _cancelled(error: ActivityError | ApplicationError) -> bool:
    """The step was cancelled, which only a cancel requested in Temporal does here."""
    return isinstance(error, ActivityError) and isinstance(error.cause, CancelledError)


def _outcome_dropped(error: asyncio.CancelledError) -> bool:
    """A step's await raised a bare asyncio.CancelledError: the cancel requested in
    Temporal came with the step's outcome, which the SDK dropped; the step is to be run
    again by its key, as one cut short is (CANCEL_WITH_STEP_OUTCOME). Not the saga's own
    CancelledAfterStep or CancelledStepFailed, which say that was done."""
    return type(error) is asyncio.CancelledError and workflow.patched(CANCEL_WITH_STEP_OUTCOME)


async def _to_its_end(
    write: Callable[[], Awaitable[object]], patch: str = OWN_WRITES_TO_THEIR_END
) -> bool:
    """One of the saga's own writes (a local activity, idempotent by its key); cut short
    by a cancel requested in Temporal, run again to its end (since `patch`, the version
    that did so for this write). Whether it was cut short."""
    try:
        await write()
    except asyncio.CancelledError as error:
        if not _outcome_dropped(error):
            raise
    except ActivityError as error:
        if not _cancelled(error) or not workflow.patched(patch):
            raise
    else:
        return False
    await write()
    return True


def _rejection(error: ActivityError | ApplicationError, default: str) -> Rejected:
    """The business reason behind a failed step, in RejectionReason names."""
    # A remote activity's failure arrives wrapped in an ActivityError; a local
    # activity's non-retryable ApplicationError may arrive as itself.
    cause = error.cause if isinstance(error, ActivityError) else error
    kind = cause.type if isinstance(cause, ApplicationError) else ""
    reason = {
        "OutOfStock": "OUT_OF_STOCK",
        "UnknownSku": "PRODUCT_UNAVAILABLE",
        "ProductUnavailable": "PRODUCT_UNAVAILABLE",
        "PaymentDeclined": "PAYMENT_DECLINED",
        "InvalidOrder": "PRODUCT_UNAVAILABLE",
    }.get(kind or "", default)
    message = cause.message if isinstance(cause, ApplicationError) else str(cause or error)
    return Rejected(reason, message)


# Refunds ----------------------------------------------------------------------


REFUNDABLE = ("COMPLETED", "PARTIALLY_REFUNDED")
T = TypeVar("T")


class Step(Protocol):
    """How a refund's step is awaited (`run` starts it; called again, it starts it anew)."""

    async def __call__(self, run: Callable[[], Awaitable[T]]) -> T: ...


async def _as_it_goes(run: Callable[[], Awaitable[T]]) -> T:
    """A step awaited as it is: a cancel requested in Temporal is the caller's to handle."""
    return await run()


@workflow.defn(name="RefundOrder")
class RefundOrderWorkflow:
    """A refund (or a cancel) after the order saga completed."""

    @workflow.run
    async def run(self, request: RefundOrderInput) -> OrderView:
        request = dataclasses.replace(request, order_id=_canonical_order_id(request.order_id))
        snapshot = await _snapshot(request.order_id)
        if _restock_again(request, snapshot):
            await restock_cancelled(request.order_id, snapshot.lines, self.to_its_end)
            after = snapshot
        elif snapshot.status not in REFUNDABLE:
            raise ApplicationError(
                f"an order {snapshot.status.lower()} cannot be refunded",
                type="NotRefundable",
                non_retryable=True,
            )
        else:
            after = await refund_completed(request, snapshot, self.to_its_end)
        return OrderView(
            order_id=after.order_id,
            status=after.status,
            currency=after.currency,
            total_minor=after.total_minor,
            lines=list(after.lines),
            payment_id=after.payment_id,
            reason=request.reason,
            refunded_minor=after.refunded_minor,
        )

    async def to_its_end(self, run: Callable[[], Awaitable[T]]) -> T:
        """One step (keyed: run again, it repeats nothing and answers the first attempt's
        result); cut short by a cancel requested in Temporal, run again to its end, as are
        the steps after it, and the run then completes with their result
        (REFUND_TO_ITS_END): the interrupted attempt may still take effect (the services'
        activities do not heartbeat), and a refund left unrecorded, or a cancel's lines
        left unrestocked, no retry would finish."""
        try:
            return await run()
        except asyncio.CancelledError as error:
            if not _outcome_dropped(error):
                raise
        except ActivityError as error:
            if not _cancelled(error) or not workflow.patched(REFUND_TO_ITS_END):
                raise
        return await run()


def _canonical_order_id(order_id: str) -> str:
    """The order id as the gateway and the saga write it. Every step of a refund is
    keyed by it (restocks, the refund at payments, the events' aggregate), and an
    operator starting RefundOrder by hand may write it in capitals or as a urn:uuid:,
    which still finds the order but would key every step anew: a cancelled order's
    lines restocked a second time. The gateway's ids are canonical already, so their
    runs (and their histories) are unchanged."""
    try:
        return str(uuid.UUID(order_id))
    except ValueError:
        raise ApplicationError(
            f"not an order id: {order_id[:64]!r}", type="InvalidOrderId", non_retryable=True
        ) from None


def _restock_again(request: RefundOrderInput, snapshot: OrderSnapshot) -> bool:
    """A cancel that finds the order CANCELLED by a cancel after completion, recently
    enough that inventory still knows the restock keys: its lines are restocked again
    by them (CANCELLED_RESTOCKED_AGAIN), each a no-op if it was done, so a retry can
    finish a restock that was cut short. An order the saga cancelled before completion
    (its reservation released, never committed) has no such record: nothing to restock."""
    if not (request.cancel and snapshot.status == "CANCELLED" and snapshot.cancel_recorded_at):
        return False
    recorded = datetime.fromisoformat(snapshot.cancel_recorded_at)
    if recorded.tzinfo is None:
        recorded = recorded.replace(tzinfo=UTC)
    if workflow.now() - recorded >= RESTOCK_AGAIN_WITHIN:
        return False
    return workflow.patched(CANCELLED_RESTOCKED_AGAIN)


async def _snapshot(order_id: str) -> OrderSnapshot:
    return await workflow.execute_local_activity_method(
        OrdersActivities.snapshot, order_id, start_to_close_timeout=LOCAL_TIMEOUT
    )


async def refund_completed(
    request: RefundOrderInput,
    snapshot: OrderSnapshot,
    step: Step = _as_it_goes,
) -> OrderSnapshot:
    """Refund a completed order (`snapshot`) and, for a cancel, return its stock; the
    order's projection after it. Every step is keyed by the order and the refund key,
    so a retry, or a second workflow doing the same refund, repeats nothing. `step`:
    how each step is awaited (RefundOrderWorkflow.to_its_end). A cancel asks payments
    for whatever it has left to refund and records what payments refunded."""
    remaining = snapshot.total_minor - snapshot.refunded_minor
    amount = remaining if request.amount_minor is None else request.amount_minor
    if not 0 < amount <= remaining:
        raise ApplicationError(
            f"refund must be between 1 and {remaining} {snapshot.currency} minor units",
            type="RefundAmountInvalid",
            non_retryable=True,
        )
    # A cancel's amount is payments' to decide (None: all it has left), never the
    # snapshot's: every cancel of the order (the gateway's, the saga's, its retry of a
    # refused one) meets under the key `cancel`, and payments' request digest includes
    # the amount, so two that differed there met as IdempotencyKeyConflict; and a
    # partial refund made at payments, not yet recorded, made the snapshot's too much
    # (PaymentAmountExceeded). No patch: only the refund's and the record's inputs
    # change, which replay does not compare.
    refund = await step(
        lambda: workflow.execute_activity(
            "payments.refund",
            RefundInput(
                f"{request.order_id}:refund:{request.refund_key}",
                snapshot.payment_id,
                None if request.cancel else amount,
                request.reason,
            ),
            result_type=RefundResult,
            task_queue=PAYMENTS_QUEUE,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=_REMOTE_RETRY,
        )
    )
    record = RecordRefundInput(
        order_id=request.order_id,
        refund_key=request.refund_key,
        refund_id=refund.refund_id,
        amount_minor=refund.amount_minor if request.cancel else amount,
        reason=request.reason,
        cancel=request.cancel,
        cancelled_by=request.requested_by,
    )
    recorded_first = workflow.patched(REFUND_RECORDED_FIRST)  # asked here: its marker's place
    if recorded_first:
        after = await step(lambda: _record_refund(record))
    if request.cancel:
        await restock_cancelled(request.order_id, snapshot.lines, step)
    if not recorded_first:
        after = await step(lambda: _record_refund(record))
    return after


async def restock_cancelled(
    order_id: str, lines: list[PricedLine], step: Step = _as_it_goes
) -> None:
    """Return a cancelled order's committed stock, line by line, under keys of the order
    alone: whoever cancels it (the gateway's RefundOrder, the saga) restocks it once."""
    for n, line in enumerate(lines, start=1):
        await step(
            _restock(RestockInput(f"{order_id}:cancel-restock:{n}", line.sku, line.quantity))
        )


def _restock(restock: RestockInput) -> Callable[[], Awaitable[object]]:
    return lambda: workflow.execute_activity(
        "inventory.restock",
        restock,
        task_queue=INVENTORY_QUEUE,
        start_to_close_timeout=timedelta(seconds=10),
        retry_policy=_REMOTE_RETRY,
    )


async def _record_refund(record: RecordRefundInput) -> OrderSnapshot:
    return await workflow.execute_local_activity_method(
        OrdersActivities.record_refund, record, start_to_close_timeout=LOCAL_TIMEOUT
    )
