"""Orders: place (the saga, through Update-With-Start), read, list, cancel, refund.

`POST /v1/orders` needs an `Idempotency-Key`: the order id and its workflow id are
derived from the customer and the key, so a retried POST joins the same saga and
answers the same order. The answer comes when the saga has priced the order (or
rejected it); the rest of the saga runs durably, and `Location` says where to
follow it. A customer sees and touches only their own orders.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from aiohttp import web
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    FailureError,
    TemporalError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.orders import ORDER_ALREADY_PLACED, OrderLineInput
from agora import scopes
from contracts.agora.common.v1 import PageRequest
from contracts.agora.orders.v1 import GetOrderRequest, ListOrdersRequest, Order
from gateway import idempotency
from gateway.context import principal_of
from gateway.deps import deps
from gateway.failures import rejection_reason
from gateway.idempotency import idempotency_key
from gateway.problems import Problem
from gateway.routing import Route
from gateway.schemas_orders import (
    CancelOrderRequest,
    CompletePaymentRequest,
    ListOrdersQuery,
    OrderAnswer,
    OrderLineAnswer,
    OrderListAnswer,
    PlaceOrderRequest,
    RefundOrderRequest,
    StatusChangeAnswer,
)
from workers.orders.model import CANCEL_UPDATE_ID, completion_update_id
from workflows.orders import (
    KEY_REUSED,
    TASK_QUEUE,
    CancelInput,
    CompletePaymentInput,
    OrderInput,
    OrderView,
    OrderWorkflow,
    RefundOrderInput,
    RefundOrderWorkflow,
    cancel_refund,
    order_id_for,
    order_workflow_id,
    refund_workflow_id,
    request_digest,
)

ORDERS_READ = frozenset({scopes.ORDERS_READ})
ORDERS_WRITE = frozenset({scopes.ORDERS_WRITE})
log = logging.getLogger(__name__)

# How long a GET waits for a running saga's own view before answering from the
# projection alone (a query waits for a worker; one that is down must not hold reads).
SAGA_QUERY_S = 0.5
# Orders whose saga has ended for good: nothing left to cancel or pay.
FINISHED = frozenset({"CANCELLED", "REJECTED", "REFUNDED"})
# An order the saga completed: a cancel refunds it (RefundOrder with cancel=True).
COMPLETE = frozenset({"COMPLETED", "PARTIALLY_REFUNDED"})


def _links(
    request: web.Request, order_id: str, workflow_id: str, run_id: str = ""
) -> dict[str, str]:
    ui = deps(request).settings.temporal_ui_url
    namespace = deps(request).settings.temporal_namespace
    workflow = f"{ui}/namespaces/{namespace}/workflows/{workflow_id}"
    return {
        "self": f"/v1/orders/{order_id}",
        "workflow": f"{workflow}/{run_id}" if run_id else workflow,
    }


def _from_view(request: web.Request, view: OrderView) -> OrderAnswer:
    return OrderAnswer(
        order_id=view.order_id,
        status=view.status,
        currency=view.currency,
        total_minor=view.total_minor,
        refunded_minor=view.refunded_minor,
        lines=[OrderLineAnswer(**vars(line)) for line in view.lines],
        reason=view.reason,
        payment_id=view.payment_id,
        next_action_url=view.next_action_url,
        links=_links(request, view.order_id, order_workflow_id(view.order_id)),
    )


def _from_proto(request: web.Request, order: Order | None) -> OrderAnswer:
    if order is None:
        raise Problem("upstream-error", "orders answered without the order")
    currency = order.total.currency if order.total else ""
    return OrderAnswer(
        order_id=order.order_id,
        status=order.status.name,
        currency=currency,
        total_minor=order.total.amount_minor if order.total else 0,
        refunded_minor=order.refunded.amount_minor if order.refunded else 0,
        lines=[
            OrderLineAnswer(
                sku=line.sku,
                title=line.title,
                quantity=line.quantity,
                unit_price_minor=line.unit_price.amount_minor if line.unit_price else 0,
                line_total_minor=line.line_total.amount_minor if line.line_total else 0,
            )
            for line in order.lines
        ],
        reason=order.reason,
        payment_id=order.payment_id,
        status_history=[
            StatusChangeAnswer(status=h.status.name, changed_at=h.changed_at, reason=h.reason)
            for h in order.status_history
        ],
        created_at=order.created_at,
        links=_links(request, order.order_id, order.workflow_id, order.run_id),
    )


async def place_order(request: web.Request, body: PlaceOrderRequest) -> web.Response:
    gw = deps(request)
    customer = principal_of(request).subject
    key = idempotency_key(request, required=True)
    order_id = order_id_for(customer, key)
    order = OrderInput(
        order_id=order_id,
        customer_id=customer,
        idempotency_key=key,
        lines=[OrderLineInput(line.sku, line.quantity) for line in body.lines],
        currency=body.currency,
        card_token=body.payment.card_token,
        expected_total_minor=body.expected_total_minor,
        price_tolerance_bps=gw.settings.order_price_tolerance_bps,
    )
    async with gw.upstream.call(request, "temporal.OrderUpdateWithStart") as timeout:
        async with asyncio.timeout(timeout):
            digest = request_digest(order.lines, order.currency, order.expected_total_minor)
            try:
                answer = await _accepted(request, order, digest, timeout)
            except _RunClosedUnanswered:
                # The run closed before `accept` answered (cancelled, terminated or
                # reset in Temporal while it priced the order): sent once more, as a
                # retry would be, it joins a run a reset started or reads how the
                # closed one ended.
                try:
                    answer = await _accepted(request, order, digest, timeout)
                except _RunClosedUnanswered:
                    raise Problem("upstream-unavailable", RESTARTED_TWICE) from None
    return web.json_response(
        answer.model_dump(mode="json", exclude_none=True),
        status=201,
        headers={"Location": answer.links["self"]},
    )


RESTARTED_TWICE = (
    "the order's saga was stopped twice while it priced the order: send the same request"
    " with the same Idempotency-Key again"
)


class _RunClosedUnanswered(Exception):
    """`accept` failed because the saga's run closed first, not by the saga's answer:
    cancelled, terminated or reset in Temporal before it answered."""


async def _accepted(
    request: web.Request, order: OrderInput, digest: str, rpc_timeout_s: float
) -> OrderAnswer:
    """The order as `accept` answers it (Update-With-Start), or as its closed run ended."""
    start = WithStartWorkflowOperation(
        OrderWorkflow.run,
        order,
        id=order_workflow_id(order.order_id),
        task_queue=TASK_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        # Never a second saga for one key: a retry joins the running one, or reads
        # how the closed one ended.
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )
    try:
        view = await deps(request).upstream.temporal.execute_update_with_start_workflow(
            OrderWorkflow.accept,
            digest,
            start_workflow_operation=start,
            rpc_timeout=timedelta(seconds=rpc_timeout_s),
        )
    except WorkflowAlreadyStartedError as closed:
        return await _closed_order(request, order, closed.run_id, digest)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            # "workflow update was aborted by closing workflow": the run closed (a reset
            # while `accept` was not yet recorded) before the update was accepted.
            raise _RunClosedUnanswered from error
        raise
    except WorkflowUpdateFailedError as refused:
        if _closed_unanswered(refused):
            raise _RunClosedUnanswered from refused
        if _placed_before(refused):
            # Temporal no longer held the key's first run (past the namespace's
            # retention): the new run refused to place the order again.
            return await _recorded_order(request, order, digest)
        raise
    return _from_view(request, view)


async def _closed_order(
    request: web.Request, order: OrderInput, run_id: str | None, digest: str
) -> OrderAnswer:
    """How the order's closed saga ended, answered to a retried POST as the first was
    (and to the first, if the run closed before `accept` answered): the order, or the
    same rejection if it was refused before it was accepted. The
    key with another order (`digest` differs) is a conflict, whatever the first became.
    A saga cancelled or terminated in Temporal has no result, nor has one that refused
    to place the key's order again (past the namespace's retention, the first run gone):
    the order as recorded."""
    gw = deps(request)
    try:
        view: OrderView = await gw.upstream.closed_result(
            OrderWorkflow.run, order_workflow_id(order.order_id), run_id
        )
    except WorkflowFailureError as ended:
        stopped = isinstance(ended.cause, CancelledError | TerminatedError)
        if not stopped and not _placed_before(ended):
            raise
        return await _recorded_order(request, order, digest)
    if view.request_digest and view.request_digest != digest:
        raise Problem("conflict", KEY_REUSED)
    if view.status == "REJECTED" and not view.lines:
        raise Problem("order-rejected", view.reason, extensions=rejection_reason(view.rejection))
    # The order as it is now, as GET answers it: the closed run's result is frozen at
    # how the saga ended, and a refund or a cancel after it (RefundOrder, another
    # workflow) left the retried POST answering COMPLETED, nothing refunded, for an
    # order cancelled and refunded. The run's own view only if it was never recorded.
    try:
        return await _recorded_order(request, order, digest)
    except Problem as problem:
        if problem.code != "order-rejected":
            raise
    return _from_view(request, view)


def _placed_before(error: FailureError | WorkflowFailureError | WorkflowUpdateFailedError) -> bool:
    """The saga refused the key's order as placed by an earlier run (ORDER_ALREADY_PLACED:
    the update `accept`'s failure, or the run's, which an older saga's `record` raised)."""
    cause: BaseException | None = error
    while isinstance(cause, FailureError | WorkflowFailureError | WorkflowUpdateFailedError):
        if isinstance(cause, ApplicationError) and cause.type == ORDER_ALREADY_PLACED:
            return True
        cause = cause.cause
    return False


# The failure Temporal gives an accepted update whose run closed before it answered.
UPDATE_OUTLIVED = "AcceptedUpdateCompletedWorkflow"


def _closed_unanswered(refused: WorkflowUpdateFailedError) -> bool:
    """`accept` failed because the saga's run closed first, not by the saga's answer."""
    cause = refused.cause
    return isinstance(cause, ApplicationError) and cause.type == UPDATE_OUTLIVED


# A saga stopped in Temporal before it recorded its order: it reserved and charged nothing.
NEVER_PLACED = (
    "the order was stopped before it was placed; nothing was reserved or charged: place it"
    " again with a new Idempotency-Key"
)


async def _recorded_order(request: web.Request, asked: OrderInput, digest: str) -> OrderAnswer:
    """The order as the orders database holds it, for a POST whose saga gave no answer
    (cancelled or terminated in Temporal, or refusing an order a run Temporal no longer
    holds placed). Its lines say what the key ordered (priced in the POST's order, one
    for one), so another order under the key is still a conflict. The expected total is
    not recorded there: only the lines and currency can be compared (the POST's own
    expected total is taken as the first's)."""
    gw = deps(request)
    call = GetOrderRequest(order_id=asked.order_id, customer_id=principal_of(request).subject)
    try:
        async with gw.upstream.call(request, "orders.GetOrder") as timeout:
            reply = await gw.upstream.orders.get_order(call, timeout=timeout)
    except Problem as problem:
        if problem.code != "not-found":
            raise
        raise Problem("order-rejected", NEVER_PLACED) from None
    order = reply.order
    if order is None:
        raise Problem("order-rejected", NEVER_PLACED)
    ordered = [OrderLineInput(line.sku, line.quantity) for line in order.lines]
    currency = order.total.currency if order.total else ""
    if request_digest(ordered, currency, asked.expected_total_minor) != digest:
        raise Problem("conflict", KEY_REUSED)
    return _from_proto(request, order)


async def _own_order(request: web.Request, *, staff: bool = True) -> Order:
    """The order, if the caller may see and act on it: its customer, or an admin (staff
    cancel and refund for customers; the request records the admin as its author).
    Not staff where `staff` is False: paying is the customer's own act."""
    gw = deps(request)
    principal = principal_of(request)
    owner = "" if staff and scopes.ADMIN in principal.scopes else principal.subject
    call = GetOrderRequest(order_id=request.match_info["order_id"], customer_id=owner)
    async with gw.upstream.call(request, "orders.GetOrder") as timeout:
        reply = await gw.upstream.orders.get_order(call, timeout=timeout)
    if reply.order is None:
        raise Problem("not-found", "no such order")
    return reply.order


async def get_order(request: web.Request, _: None) -> OrderAnswer:
    order = await _own_order(request)
    answer = _from_proto(request, order)
    if order.status.name == "PENDING":
        # A payment waiting for the customer (3-D Secure) lives in the saga only (the
        # projection records its steps from CONFIRMED on): ask it, so the customer
        # polling the order learns it waits and where to go (next_action_url).
        view = await _saga_view(request, order.order_id)
        if view is not None and view.status == "AWAITING_PAYMENT":
            return answer.model_copy(
                update={"status": view.status, "next_action_url": view.next_action_url}
            )
    return answer


async def _saga_view(request: web.Request, order_id: str) -> OrderView | None:
    """The running saga's own view, or None when it cannot answer at once (closed
    meanwhile, its worker down): then the projection's answer stands."""
    gw = deps(request)
    handle = gw.upstream.temporal.get_workflow_handle(order_workflow_id(order_id))
    try:
        async with gw.upstream.call(request, "temporal.OrderStatus") as timeout:
            budget = min(timeout, SAGA_QUERY_S)
            # rpc_timeout bounds one attempt only: the client retries an unavailable
            # Temporal for up to ~10 s, so the whole query gets the budget.
            async with asyncio.timeout(budget):
                view: OrderView = await handle.query(
                    OrderWorkflow.status, rpc_timeout=timedelta(seconds=budget)
                )
    except (Problem, TemporalError) as error:
        # A worker that cannot answer (down, or its task failing: WorkflowQueryFailedError)
        # is where a stuck order is looked at: the projection answers it.
        log.warning("order saga did not answer its status query: %s", error)
        return None
    return view


async def list_orders(request: web.Request, query: ListOrdersQuery) -> OrderListAnswer:
    gw = deps(request)
    call = ListOrdersRequest(
        customer_id=principal_of(request).subject,
        page=PageRequest(page_size=query.limit, cursor=query.cursor),
    )
    async with gw.upstream.call(request, "orders.ListOrders") as timeout:
        reply = await gw.upstream.orders.list_orders(call, timeout=timeout)
    return OrderListAnswer(
        orders=[_from_proto(request, order) for order in reply.orders],
        next_cursor=reply.page.next_cursor if reply.page else "",
    )


async def cancel_order(request: web.Request, body: CancelOrderRequest) -> OrderAnswer:
    """Before completion the saga compensates; after it, everything is refunded."""
    order = await _own_order(request)
    if order.status.name in FINISHED:
        raise Problem("conflict", f"the order is {order.status.name.lower()}")
    if order.status.name not in COMPLETE:
        try:
            view = await _cancel_running(request, order, body)
        except Problem as problem:
            # The saga ended between the read and the update (finished, or closed).
            if problem.code != "conflict":
                raise
            order = await _own_order(request)
            if order.status.name not in COMPLETE:
                raise
        else:
            if view.status in FINISHED - {"CANCELLED"}:
                # A refund of everything got there first; nothing is left to cancel.
                raise Problem("conflict", f"the order is {view.status.lower()}")
            if view.status not in COMPLETE:
                return _from_view(request, view)
            # The cancel came during the last step (stock commit) of a saga that
            # passed it before CANCEL_AFTER_LAST_STEPS (which cancels the completed
            # order in the saga), or the saga's own cancel failed (a refund of part
            # of it was recorded meanwhile: PARTIALLY_REFUNDED): cancel it here.
    return _from_view(request, await _cancel_completed(request, order, body))


async def _cancel_running(
    request: web.Request, order: Order, body: CancelOrderRequest
) -> OrderView:
    gw = deps(request)
    handle = gw.upstream.temporal.get_workflow_handle(order_workflow_id(order.order_id))
    async with gw.upstream.call(request, "temporal.CancelOrder") as timeout:
        async with asyncio.timeout(timeout):
            view: OrderView = await handle.execute_update(
                OrderWorkflow.cancel_order,
                CancelInput(principal_of(request).subject, body.reason, order.order_id),
                # One cancel per saga: a retried or repeated cancel joins the first
                # (Temporal deduplicates updates by id) instead of adding an update
                # that waits beside it, up to the run's limit of 10 in flight.
                id=CANCEL_UPDATE_ID,
                rpc_timeout=timedelta(seconds=timeout),
            )
    return view


async def _cancel_completed(
    request: web.Request, order: Order, body: CancelOrderRequest
) -> OrderView:
    cancel = cancel_refund(order.order_id, CancelInput(principal_of(request).subject, body.reason))
    # One cancel per order, whatever its reason: a second joins the first.
    return await _refund(request, "temporal.CancelCompletedOrder", cancel, same_request=False)


async def refund_order(request: web.Request, body: RefundOrderRequest) -> OrderAnswer:
    refund_key = idempotency_key(request, required=True)  # the input in full, then calls
    order = await _own_order(request)
    data = RefundOrderInput(
        order_id=order.order_id,
        refund_key=refund_key,
        amount_minor=body.amount_minor,
        reason=body.reason,
        requested_by=principal_of(request).subject,
    )
    return _from_view(request, await _refund(request, "temporal.RefundOrder", data))


async def _refund(
    request: web.Request, name: str, data: RefundOrderInput, *, same_request: bool = True
) -> OrderView:
    """Run RefundOrder for `data`, idempotent by its order and refund key."""
    gw = deps(request)
    async with gw.upstream.call(request, name) as timeout:
        view: OrderView = await gw.upstream.execute_workflow(
            RefundOrderWorkflow.run,
            data,
            id=refund_workflow_id(data.order_id, data.refund_key),
            task_queue=TASK_QUEUE,
            budget_s=timeout,
            idempotent=True,
            same_request=same_request,
        )
    return view


async def complete_payment(request: web.Request, body: CompletePaymentRequest) -> OrderAnswer:
    """After the payment's extra step (3-D Secure), authorize again with the new token."""
    # The customer's own: an admin's card token would pay for another's order.
    order = await _own_order(request, staff=False)
    if order.status.name in FINISHED or order.status.name == "COMPLETED":
        raise Problem("conflict", f"the order is {order.status.name.lower()}")
    gw = deps(request)
    handle = gw.upstream.temporal.get_workflow_handle(order_workflow_id(order.order_id))
    update_id = await _completion_id(request, order.order_id, body.card_token)
    async with gw.upstream.call(request, "temporal.CompletePayment") as timeout:
        async with asyncio.timeout(timeout):
            view = await handle.execute_update(
                OrderWorkflow.complete_payment,
                CompletePaymentInput(body.card_token, order.order_id),
                id=update_id,
                rpc_timeout=timedelta(seconds=timeout),
            )
    return _from_view(request, view)


async def _completion_id(request: web.Request, order_id: str, card_token: str) -> str | None:
    """The completion's update id: Temporal answers an id it has seen with that update's
    outcome, so a retry sent with the same id joins the first instead of authorizing
    again or waiting beside it.

    With an Idempotency-Key, the key's (and the token's): it holds however far the saga
    has gone. Without one, this round's (the token and the round's own next_action_url,
    so a later round with the same token is a new update), which only a retry sent
    while the round still waits can make again: once the first was taken the saga no
    longer shows the round's link, and a retry whose answer was lost got a fresh id, the
    validator's 409 "not waiting" for a payment going ahead (or, a round later, a second
    authorization). Without the saga's view (it did not answer), an id of its own."""
    if idempotency.HEADER in request.headers:
        return completion_update_id(card_token, f"key:{idempotency_key(request, required=True)}")
    waiting = await _saga_view(request, order_id)
    if waiting is not None and waiting.next_action_url:
        return completion_update_id(card_token, waiting.next_action_url)
    return None


ORDER_PROBLEMS = ("invalid-argument", "not-found", "conflict", "order-rejected")

ROUTES = [
    Route(
        "POST",
        "/v1/orders",
        place_order,
        "Place an order (requires Idempotency-Key); answers once it is priced or rejected"
        " (PRICE_CHANGED: above the expected_total_minor the customer was shown)",
        "orders",
        auth=True,
        scopes=ORDERS_WRITE,
        route_class="write",
        body=PlaceOrderRequest,
        response=OrderAnswer,
        status=201,
        problems=ORDER_PROBLEMS,
        idempotency="required",
    ),
    Route(
        "GET",
        "/v1/orders",
        list_orders,
        "The caller's orders, newest first",
        "orders",
        auth=True,
        scopes=ORDERS_READ,
        route_class="read",
        query=ListOrdersQuery,
        response=OrderListAnswer,
        problems=("invalid-argument",),
    ),
    Route(
        "GET",
        "/v1/orders/{order_id}",
        get_order,
        "One of the caller's orders",
        "orders",
        auth=True,
        scopes=ORDERS_READ,
        route_class="read",
        response=OrderAnswer,
        problems=("invalid-argument", "not-found"),
    ),
    Route(
        "POST",
        "/v1/orders/{order_id}/cancel",
        cancel_order,
        "Cancel: compensates a running order, refunds a completed one",
        "orders",
        auth=True,
        scopes=ORDERS_WRITE,
        route_class="write",
        body=CancelOrderRequest,
        response=OrderAnswer,
        problems=ORDER_PROBLEMS,
    ),
    Route(
        "POST",
        "/v1/orders/{order_id}/refunds",
        refund_order,
        "Refund part or all of a completed order (requires Idempotency-Key)",
        "orders",
        auth=True,
        scopes=ORDERS_WRITE,
        route_class="write",
        body=RefundOrderRequest,
        response=OrderAnswer,
        # precondition-failed: more than is left to refund.
        problems=(*ORDER_PROBLEMS, "precondition-failed"),
        idempotency="required",
    ),
    Route(
        "POST",
        "/v1/orders/{order_id}/payment",
        complete_payment,
        "Finish a payment that needed the customer (e.g. 3-D Secure)",
        "orders",
        auth=True,
        scopes=ORDERS_WRITE,
        route_class="write",
        body=CompletePaymentRequest,
        response=OrderAnswer,
        problems=ORDER_PROBLEMS,
        idempotency="optional",
    ),
]
