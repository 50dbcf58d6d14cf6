"""The order saga, branch by branch, in the time-skipping environment with stand-in activities.

Each stand-in records what the saga asked of it, so a test reads as the story of
one order: what ran, in what order, what was undone, how the order ended.
Histories of these runs are kept under tests/histories/ and replayed by
test_order_replay.py, so a non-deterministic change to the workflow fails CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, UpdateWorkflowExecutionLifecycleStage
from temporalio.api.update.v1 import UpdateRef, WaitPolicy
from temporalio.api.workflowservice.v1 import PollWorkflowExecutionUpdateRequest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateHandle,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.inventory import (
    CommitInput,
    CommitResult,
    ReleaseInput,
    ReleaseResult,
    ReserveInput,
    ReserveResult,
    RestockInput,
    RestockResult,
)
from activities.orders import (
    ENDED,
    OrderLineInput,
    OrderSnapshot,
    PricedLine,
    PricedOrder,
    PriceInput,
    RecordOrderInput,
    RecordRefundInput,
    TransitionInput,
    UnrecordedEnd,
    saga_outcome,
)
from agora.temporal import workflow_runner
from gateway.metrics import GatewayMetrics
from gateway.upstream import StartOptions, Upstream
from workers.payments.model import (
    AuthorizeInput,
    AuthorizeResult,
    CaptureInput,
    CaptureResult,
    RefundInput,
    RefundResult,
    VoidInput,
    VoidResult,
)
from workflows.orders import (
    INVENTORY_QUEUE,
    PAYMENT_ROUNDS,
    PAYMENTS_QUEUE,
    CancelInput,
    CompletePaymentInput,
    OrderInput,
    OrderView,
    OrderWorkflow,
    RefundOrderInput,
    RefundOrderWorkflow,
    cancel_refund,
    order_workflow_id,
    refund_workflow_id,
    request_digest,
)

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
ORDERS_QUEUE = "orders-test"


async def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class World:
    """What the stand-ins do, and what they were asked to do."""

    calls: list[str] = field(default_factory=list)
    out_of_stock: bool = False
    unknown_sku: bool = False
    # Catalog cannot be reached: pricing fails as a transient error would.
    catalog_down: bool = False
    card: str = "ok"  # ok | decline | slow | flaky | action | not_a_token
    flaky_failures: int = 2
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    transitions: list[str] = field(default_factory=list)
    # The refunded_minor each transition carried, by status.
    transition_refunds: dict[str, int] = field(default_factory=dict)
    # The reason each transition carried, by status.
    transition_reasons: dict[str, str] = field(default_factory=dict)
    refunded: int = 0
    capture_refused: bool = False
    refund_refused: bool = False
    voided: list[str] = field(default_factory=list)
    # How long before the reserve step completed inventory committed it (a first
    # attempt whose completion was lost, retried until one got through).
    reserve_committed_ago: timedelta = timedelta(0)
    # The orders projection's status, by order, as orders.transition and
    # orders.record_refund keep it (an order not recorded here reads COMPLETED).
    statuses: dict[str, str] = field(default_factory=dict)
    # The idempotency keys payments' refunds and inventory's restocks were asked with.
    refund_keys: list[str] = field(default_factory=list)
    restock_keys: list[str] = field(default_factory=list)
    # Refunds recorded, by (order, refund key): a second record of one is a no-op.
    recorded_refunds: set[tuple[str, str]] = field(default_factory=set)
    # When a cancel after completion was recorded, by order (the snapshot's
    # cancel_recorded_at), on `clock`: the test server's, which skips ahead.
    cancels_recorded: dict[str, str] = field(default_factory=dict)
    clock: Callable[[], Awaitable[datetime]] = system_clock
    # A customer's partial refund of this much lands (and is recorded) as the next
    # refund reaches payments, which refuses more than is left (PaymentAmountExceeded).
    partial_refund_landing: int = 0
    # The same, made at payments but not yet recorded in the orders projection (the
    # customer's RefundOrder between its refund and its record): the snapshot misses it.
    unrecorded_refund_landing: int = 0
    # What payments refunded that the projection does not show yet.
    refunded_unrecorded: int = 0
    # Refunds payments made, by key: the amount asked (None: all that was left) and the
    # answer. As payments' request digest, which includes the amount, a key's retry is
    # answered the first result and another amount under it is IdempotencyKeyConflict.
    refunds_made: dict[str, tuple[int | None, RefundResult]] = field(default_factory=dict)
    # The first COMPLETED transition is written, then holds until it is cancelled (a
    # cancel requested in Temporal cuts the step short after it took effect).
    hold_completed_transition: bool = False
    # Orders recorded by another run that has ended (the key's first run, gone from
    # Temporal past the namespace's retention): price and record refuse them.
    placed_before: set[str] = field(default_factory=set)
    # The amounts payments was asked to authorize.
    authorized: list[int] = field(default_factory=list)
    # The first of these writes ("record", "count", "record_refund", or a transition's
    # status) hangs, doing nothing, until it is cancelled (the orders database stops
    # answering).
    stalled_writes: set[str] = field(default_factory=set)
    # Voids payments refuses for good, by how their key ends (":authorize:1:void").
    refused_voids: set[str] = field(default_factory=set)
    # The order's lines as the projection holds them (snapshot, record_refund).
    order_lines: list[PricedLine] = field(
        default_factory=lambda: [PricedLine("SKU-1", "T", 2, 1000, 2000)]
    )

    def refuse_placed_before(self, order_id: str) -> None:
        if order_id in self.placed_before:
            raise ApplicationError(
                f"order {order_id} was placed before with this key and is completed",
                type="OrderAlreadyPlaced",
                non_retryable=True,
            )

    async def gate(self, step: str) -> None:
        if step in self.gates:
            await self.gates[step].wait()

    async def stall(self, write: str) -> None:
        if write in self.stalled_writes:
            self.stalled_writes.discard(write)
            await asyncio.Event().wait()  # until the saga's cancel cancels this attempt


world = World()


@activity.defn(name="orders.price")
async def price(data: PriceInput) -> PricedOrder:
    world.calls.append("price")
    await world.gate("price")
    world.refuse_placed_before(data.order_id)
    if world.catalog_down:
        raise ApplicationError("catalog: connection refused to 10.0.0.7:50051", type="GRPCError")
    if world.unknown_sku:
        raise ApplicationError("not available: NOPE", type="ProductUnavailable", non_retryable=True)
    lines = [
        PricedLine(x.sku, f"Title {x.sku}", x.quantity, 1000, 1000 * x.quantity) for x in data.lines
    ]
    return PricedOrder(lines, data.currency, sum(x.line_total_minor for x in lines))


@activity.defn(name="orders.record")
async def record(data: RecordOrderInput) -> None:
    world.calls.append("record")
    await world.stall("record")
    world.refuse_placed_before(data.order_id)
    world.statuses[data.order_id] = "PENDING"


@activity.defn(name="orders.transition")
async def transition(data: TransitionInput) -> None:
    world.calls.append(f"transition:{data.status}")
    await world.stall(data.status)
    if data.order_id not in world.statuses:  # as orders.transition refuses
        raise ApplicationError(
            f"no order {data.order_id}", type="OrderNotFound", non_retryable=True
        )
    world.transitions.append(data.status)
    world.transition_refunds[data.status] = data.refunded_minor
    world.transition_reasons[data.status] = data.reason
    if world.statuses.get(data.order_id) not in ENDED:  # as orders.transition refuses
        world.statuses[data.order_id] = data.status
    if data.status == "COMPLETED" and world.hold_completed_transition:
        world.hold_completed_transition = False
        await asyncio.Event().wait()  # until the saga's cancel cancels this attempt


@activity.defn(name="orders.count_unrecorded")
async def count_unrecorded(data: UnrecordedEnd) -> None:
    world.calls.append(f"count:{data.rejection}")
    await world.stall("count")


@activity.defn(name="orders.snapshot")
async def snapshot(order_id: str) -> OrderSnapshot:
    return OrderSnapshot(
        order_id,
        "cust",
        world.statuses.get(order_id, "COMPLETED"),
        "EUR",
        2000,
        world.refunded,
        "pay-1",
        list(world.order_lines),
        world.cancels_recorded.get(order_id, ""),
    )


@activity.defn(name="orders.record_refund")
async def record_refund(data: RecordRefundInput) -> OrderSnapshot:
    world.calls.append(f"record_refund:{data.amount_minor}:{'cancel' if data.cancel else 'refund'}")
    await world.stall("record_refund")
    if (data.order_id, data.refund_key) not in world.recorded_refunds:
        world.recorded_refunds.add((data.order_id, data.refund_key))
        world.refunded += data.amount_minor
        world.statuses[data.order_id] = _status_refunded(data)
        if data.cancel:
            world.cancels_recorded[data.order_id] = (await world.clock()).isoformat()
    lines = list(world.order_lines)
    return OrderSnapshot(
        data.order_id, "cust", _status_refunded(data), "EUR", 2000, world.refunded, "pay-1", lines
    )


def _status_refunded(data: RecordRefundInput) -> str:
    """The order's status once `data` is recorded, as orders.record_refund sets it."""
    if data.cancel:
        return "CANCELLED"
    return "REFUNDED" if world.refunded >= 2000 else "PARTIALLY_REFUNDED"


@activity.defn(name="inventory.reserve")
async def reserve(data: ReserveInput) -> ReserveResult:
    world.calls.append("reserve")
    await world.gate("reserve")
    if world.out_of_stock:
        raise ApplicationError("out of stock", type="OutOfStock", non_retryable=True)
    # Inventory's expiry counts from its first, committed attempt (the server's clock).
    committed = activity.info().current_attempt_scheduled_time - world.reserve_committed_ago
    expires = committed + timedelta(seconds=data.ttl_seconds)
    return ReserveResult(data.reservation_id, "held", expires.isoformat(), [], [])


@activity.defn(name="inventory.release")
async def release(data: ReleaseInput) -> ReleaseResult:
    world.calls.append("release")
    return ReleaseResult(data.reservation_id, "released", True, [])


@activity.defn(name="inventory.commit")
async def commit(data: CommitInput) -> CommitResult:
    world.calls.append("commit")
    await world.gate("commit")
    return CommitResult(data.reservation_id, "committed", True, [])


@activity.defn(name="inventory.restock")
async def restock(data: RestockInput) -> RestockResult:
    world.calls.append(f"restock:{data.sku}:{data.quantity}")
    world.restock_keys.append(data.key)
    await world.gate("restock")
    return RestockResult(data.sku, data.quantity, [])


@activity.defn(name="payments.authorize")
async def authorize(data: AuthorizeInput) -> AuthorizeResult:
    world.calls.append("authorize")
    world.authorized.append(data.amount_minor)
    await world.gate("authorize")
    card = "ok" if data.card_token == "tok_after_action" else world.card
    if card == "decline":
        raise ApplicationError(
            "insufficient funds", "insufficient_funds", type="PaymentDeclined", non_retryable=True
        )
    if card == "not_a_token":  # as payments refuses a token its PSP does not know
        raise ApplicationError(
            "card_token is not a card token of the PSP",
            "card_token",
            type="InvalidPaymentRequest",
            non_retryable=True,
        )
    if card == "slow":
        await asyncio.sleep(3600)
    if card == "flaky" and world.flaky_failures > 0:
        world.flaky_failures -= 1
        raise ApplicationError("PSP unavailable", type="PspUnavailable")
    if card == "action":
        raise ApplicationError(
            "3-D Secure",
            "requires_action",
            "https://psp.test/3ds/1",
            type="PaymentRequiresAction",
            non_retryable=True,
        )
    return AuthorizeResult(
        "pay-1",
        data.order_id,
        "authorized",
        data.amount_minor,
        data.currency,
        "visa",
        "4242",
        "psp-1",
    )


@activity.defn(name="payments.capture")
async def capture(data: CaptureInput) -> CaptureResult:
    world.calls.append("capture")
    await world.gate("capture")
    if world.capture_refused:
        raise ApplicationError(
            "the PSP refused the capture", type="PaymentStateConflict", non_retryable=True
        )
    return CaptureResult(data.payment_id, "cap-1", 2000, 2000, 0, "EUR", "captured")


@activity.defn(name="payments.void")
async def void(data: VoidInput) -> VoidResult:
    world.calls.append("void")
    world.voided.append(data.idempotency_key)
    await world.gate("void")
    if any(data.idempotency_key.endswith(end) for end in world.refused_voids):
        raise ApplicationError(
            "the PSP refused the void", type="PaymentStateConflict", non_retryable=True
        )
    return VoidResult(data.payment_id, 0, "EUR", "voided")


@activity.defn(name="payments.refund")
async def refund(data: RefundInput) -> RefundResult:
    world.calls.append(f"refund:{data.amount_minor}")
    world.refund_keys.append(data.idempotency_key)
    await world.gate("refund")
    made = world.refunds_made.get(data.idempotency_key)
    if made is not None:
        if made[0] != data.amount_minor:
            raise ApplicationError(
                "this idempotency key was used for another refund",
                type="IdempotencyKeyConflict",
                non_retryable=True,
            )
        return made[1]
    if world.partial_refund_landing:
        order_id = data.idempotency_key.split(":")[0]
        world.refunded += world.partial_refund_landing
        world.statuses[order_id] = "PARTIALLY_REFUNDED"
        world.partial_refund_landing = 0
    world.refunded_unrecorded += world.unrecorded_refund_landing
    world.unrecorded_refund_landing = 0
    left = 2000 - world.refunded - world.refunded_unrecorded
    amount = left if data.amount_minor is None else data.amount_minor  # None: all that is left
    if world.refund_refused or amount > left:
        raise ApplicationError(
            "the refund exceeds what is captured", type="PaymentAmountExceeded", non_retryable=True
        )
    result = RefundResult(data.payment_id, "ref-1", amount, 2000, "EUR", "refunded")
    world.refunds_made[data.idempotency_key] = (data.amount_minor, result)
    return result


def orders_worker(env: WorkflowEnvironment, *, cached: bool = True) -> Worker:
    """`cached=False`: no workflow cache, so no sticky queue that a next worker would
    wait on after this one stops (the test server's clock stands still meanwhile)."""
    return Worker(
        env.client,
        task_queue=ORDERS_QUEUE,
        workflows=[OrderWorkflow, RefundOrderWorkflow],
        workflow_runner=workflow_runner(),
        activities=[price, record, transition, snapshot, record_refund, count_unrecorded],
        max_cached_workflows=1000 if cached else 0,
    )


@pytest.fixture
async def others(env: WorkflowEnvironment) -> AsyncIterator[Client]:
    """The inventory and payments stand-ins, for a fresh world; no orders worker."""
    global world
    world = World(clock=env.get_current_time)
    workers = [
        Worker(
            env.client, task_queue=INVENTORY_QUEUE, activities=[reserve, release, commit, restock]
        ),
        Worker(
            env.client, task_queue=PAYMENTS_QUEUE, activities=[authorize, capture, void, refund]
        ),
    ]
    async with workers[0], workers[1]:
        yield env.client


@pytest.fixture
async def client(env: WorkflowEnvironment, others: Client) -> AsyncIterator[Client]:
    async with orders_worker(env):
        yield env.client


def new_order(**overrides: object) -> OrderInput:
    order_id = str(uuid.uuid4())
    base = OrderInput(
        order_id=order_id,
        customer_id="cust-1",
        idempotency_key=f"key-{order_id}",
        lines=[OrderLineInput("SKU-1", 2)],
        currency="EUR",
        card_token="tok_test",
        payment_step_timeout_s=1.0,
    )
    for key, value in overrides.items():
        setattr(base, key, value)
    return base


async def reached(step: str) -> None:
    """Until the saga has called `step` (its stand-in then waits at its gate)."""
    for _ in range(500):
        if step in world.calls:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the saga never reached {step}: {world.calls}")


async def awaiting_payment(handle: WorkflowHandle[Any, Any]) -> None:
    """Until the saga waits for the customer's payment step."""
    for _ in range(200):
        if (await handle.query(OrderWorkflow.status)).status == "AWAITING_PAYMENT":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the saga never waited for the payment step")


async def started_awaiting_payment(
    client: Client, **overrides: object
) -> tuple[OrderInput, WorkflowHandle[Any, Any]]:
    """An order paid with the 3-D Secure card, started and waiting for the customer."""
    world.card = "action"
    order = new_order(**overrides)
    handle = await client.start_workflow(
        OrderWorkflow.run, order, id=order_workflow_id(order.order_id), task_queue=ORDERS_QUEUE
    )
    await awaiting_payment(handle)
    return order, handle


ADMITTED = UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ADMITTED


async def update_admitted(client: Client, workflow_id: str, update_id: str) -> None:
    """Until the server has admitted the update, before any worker has seen it: asked
    with PollWorkflowExecutionUpdate at the ADMITTED stage (the SDK's start_update does
    not offer that stage), which answers NOT_FOUND while the update has not arrived."""
    request = PollWorkflowExecutionUpdateRequest(
        namespace=client.namespace,
        update_ref=UpdateRef(
            workflow_execution=WorkflowExecution(workflow_id=workflow_id), update_id=update_id
        ),
        wait_policy=WaitPolicy(lifecycle_stage=ADMITTED),
    )
    for _ in range(500):
        try:
            answer = await client.workflow_service.poll_workflow_execution_update(request)
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
        else:
            if answer.stage >= ADMITTED:
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the server never admitted update {update_id}")


async def run(client: Client, order: OrderInput, name: str | None = None) -> OrderView:
    handle = await client.start_workflow(
        OrderWorkflow.run, order, id=order_workflow_id(order.order_id), task_queue=ORDERS_QUEUE
    )
    result = await handle.result()
    await keep_history(client, handle.id, name)
    return result


async def refund_run(client: Client, request: RefundOrderInput, name: str) -> OrderView:
    handle = await client.start_workflow(
        RefundOrderWorkflow.run, request, id=f"refund-{uuid.uuid4()}", task_queue=ORDERS_QUEUE
    )
    result = await handle.result()
    await keep_history(client, handle.id, name)
    return result


async def keep_history(client: Client, workflow_id: str, name: str | None) -> None:
    """AGORA_RECORD_HISTORIES=1 refreshes the committed histories the replay test uses."""
    if name and os.environ.get("AGORA_RECORD_HISTORIES"):
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"order-{name}.json").write_text(history.to_json())


async def test_happy_path_reserves_authorizes_confirms_captures_and_commits(client: Client) -> None:
    view = await run(client, new_order(), "happy")
    assert view.status == "COMPLETED"
    assert view.total_minor == 2000
    assert world.calls == [
        "price",
        "record",
        "reserve",
        "authorize",
        "transition:CONFIRMED",
        "capture",
        "commit",
        "transition:COMPLETED",
    ]


async def test_decline_releases_the_stock_and_charges_nothing(client: Client) -> None:
    world.card = "decline"
    view = await run(client, new_order(), "decline")
    assert (view.status, view.rejection) == ("REJECTED", "PAYMENT_DECLINED")
    assert "capture" not in world.calls
    assert world.calls[-3:] == ["void", "release", "transition:REJECTED"]


async def test_a_card_token_payments_refuses_is_the_customers_decline(client: Client) -> None:
    # Not PAYMENT_FAILED, the platform's failure that pages: any customer could send
    # made-up tokens (only the PSP knows its tokens, so the gateway cannot refuse them).
    world.card = "not_a_token"
    view = await run(client, new_order(), "card-token-refused")
    assert (view.status, view.rejection) == ("REJECTED", "PAYMENT_DECLINED")
    assert view.reason == "card_token is not a card token of the PSP"
    assert saga_outcome(view.status, view.rejection, view.reason) == "rejected"
    assert world.calls[-3:] == ["void", "release", "transition:REJECTED"]
    assert "capture" not in world.calls


async def test_a_silent_psp_counts_as_a_failure_though_a_compensation_failed_too(
    client: Client,
) -> None:
    # The reason names the void refused after the PSP's silence; the outcome is still
    # the platform's failure (an outage pages), not the customer's rejection.
    world.card = "slow"
    world.refused_voids.add(":authorize:1:void")
    view = await run(client, new_order())
    assert (view.rejection, view.reason) == (
        "PAYMENT_TIMEOUT",
        "the payment provider did not answer; void payment failed",
    )
    assert saga_outcome(view.status, view.rejection, view.reason) == "failed"


async def test_out_of_stock_never_reaches_payments(client: Client) -> None:
    world.out_of_stock = True
    view = await run(client, new_order(), "out-of-stock")
    assert (view.status, view.rejection) == ("REJECTED", "OUT_OF_STOCK")
    assert not any(c in world.calls for c in ("authorize", "capture", "void"))
    assert world.calls[-2:] == ["release", "transition:REJECTED"]


async def test_an_unknown_product_is_rejected_before_anything_happens(client: Client) -> None:
    # (Through the gateway, the POST's Update-With-Start answers this rejection at once:
    # tests/integration/test_orders.py. The time-skipping server cannot complete an
    # update and the run in one task, so here the run's own result is checked.)
    world.unknown_sku = True
    view = await run(client, new_order(), "unknown-product")
    assert (view.status, view.rejection) == ("REJECTED", "PRODUCT_UNAVAILABLE")
    assert world.calls == ["price", "count:PRODUCT_UNAVAILABLE"]


async def test_a_catalog_outage_rejects_the_order_after_its_pricing_attempts(
    client: Client,
) -> None:
    # Pricing is a local activity, retried by the worker in real time (1 s, then 2 s
    # apart), so the attempts here are few.
    world.catalog_down = True
    view = await run(client, new_order(pricing_attempts=3), "pricing-unavailable")
    assert (view.status, view.rejection) == ("REJECTED", "PRICING_UNAVAILABLE")
    assert "(3 attempts)" in view.reason and "10.0.0.7" not in view.reason
    # Retried, then nothing reserved, recorded or charged; counted as an ended saga.
    assert world.calls == ["price"] * 3 + ["count:PRICING_UNAVAILABLE"]


def post(
    order: OrderInput, *, task_timeout: timedelta | None = None
) -> WithStartWorkflowOperation[Any, Any]:
    """The saga's start as the gateway's POST sends it (Update-With-Start)."""
    return WithStartWorkflowOperation(
        OrderWorkflow.run,
        order,
        id=order_workflow_id(order.order_id),
        task_queue=ORDERS_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        task_timeout=task_timeout,
    )


async def test_prices_risen_beyond_the_tolerance_reject_the_order_before_anything_happens(
    client: Client,
) -> None:
    # The cart showed 19.00; catalog now prices the order at 20.00, more than 1 % above.
    # The POST's answer (accept, through Update-With-Start) is the rejection.
    order = new_order(expected_total_minor=1900, price_tolerance_bps=100)
    start = post(order)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await client.execute_update_with_start_workflow(
            OrderWorkflow.accept,
            request_digest(order.lines, order.currency, order.expected_total_minor),
            start_workflow_operation=start,
        )
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.type == "PRICE_CHANGED"
    handle = client.get_workflow_handle_for(OrderWorkflow.run, order_workflow_id(order.order_id))
    view = await handle.result()
    await keep_history(client, handle.id, "price-changed")
    assert (view.status, view.rejection, view.lines) == ("REJECTED", "PRICE_CHANGED", [])
    assert "now comes to 2000, more than the 1900 you were shown" in view.reason
    assert "new Idempotency-Key" in view.reason
    # Nothing recorded, reserved or charged; counted as an ended saga.
    assert world.calls == ["price", "count:PRICE_CHANGED"]


@pytest.mark.parametrize(
    ("case", "expected", "tolerance_bps"),
    [("within-tolerance", 1990, 100), ("as-shown", 2000, 0), ("lower", 2500, 0)],
)
async def test_a_price_within_the_tolerance_or_lower_is_accepted_and_charged_as_priced(
    client: Client, case: str, expected: int, tolerance_bps: int
) -> None:
    order = new_order(expected_total_minor=expected, price_tolerance_bps=tolerance_bps)
    view = await run(client, order, f"price-{case}")
    assert (view.status, view.total_minor) == ("COMPLETED", 2000), (view.rejection, view.reason)
    assert world.authorized == [2000]  # the current total, not the one shown


async def test_slow_psp_times_out_then_voids_and_releases(client: Client) -> None:
    world.card = "slow"
    view = await run(client, new_order(), "slow-psp")
    assert (view.status, view.rejection) == ("REJECTED", "PAYMENT_TIMEOUT")
    assert world.calls.count("authorize") == 3  # retried, then given up
    assert world.calls[-3:] == ["void", "release", "transition:REJECTED"]


async def test_flaky_psp_is_retried_and_the_order_completes(client: Client) -> None:
    world.card = "flaky"
    view = await run(client, new_order(), "flaky-psp")
    assert view.status == "COMPLETED", (view.rejection, view.reason)
    assert world.calls.count("authorize") == 3
    assert "void" not in world.calls and "release" not in world.calls


async def test_an_outage_longer_than_three_attempts_is_ridden_out_within_the_budget(
    client: Client,
) -> None:
    # Fast transient failures (our database or Redis restarting under the payments
    # service) are retried with backoff for the PSP's time budget, not three times.
    # Five fast failures back off 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s: within 3 x 5 s.
    world.card, world.flaky_failures = "flaky", 5
    view = await run(client, new_order(payment_step_timeout_s=5.0), "payments-outage")
    assert view.status == "COMPLETED"
    assert world.calls.count("authorize") == 6
    assert "void" not in world.calls and "release" not in world.calls


async def test_unpaid_order_times_out_and_compensates(client: Client, env) -> None:
    world.card = "action"
    view = await run(client, new_order(payment_timeout_s=900), "unpaid-timeout")
    assert (view.status, view.rejection) == ("REJECTED", "PAYMENT_TIMEOUT")
    assert view.payment_outcome == "timeout"
    assert world.calls[-3:] == ["void", "release", "transition:REJECTED"]


async def test_an_unpaid_order_gives_up_before_its_stock_reservation_expires(
    client: Client,
) -> None:
    world.card = "action"
    order = new_order(payment_timeout_s=900, reservation_ttl_s=600)
    view = await run(client, order, None)
    assert (view.status, view.rejection) == ("REJECTED", "PAYMENT_TIMEOUT")
    described = await client.get_workflow_handle(order_workflow_id(order.order_id)).describe()
    assert described.close_time is not None
    waited = (described.close_time - described.start_time).total_seconds()
    assert 500 < waited < 600, "given up within the reservation's life, before its payment timeout"
    assert world.calls[-3:] == ["void", "release", "transition:REJECTED"]


async def test_the_payment_wait_ends_before_the_reservation_inventory_recorded_expires(
    client: Client,
) -> None:
    # The reserve committed 300 s before its step completed (the completion was lost
    # and retried): 300 s of the 600 s reservation are left, not 600.
    world.card = "action"
    world.reserve_committed_ago = timedelta(seconds=300)
    order = new_order(payment_timeout_s=900, reservation_ttl_s=600)
    view = await run(client, order, "reservation-expiry-wait")
    assert (view.status, view.rejection) == ("REJECTED", "PAYMENT_TIMEOUT")
    described = await client.get_workflow_handle(order_workflow_id(order.order_id)).describe()
    assert described.close_time is not None
    waited = (described.close_time - described.start_time).total_seconds()
    assert 200 < waited < 300, "given up before inventory lets the reservation lapse"
    assert "capture" not in world.calls
    assert world.calls[-3:] == ["void", "release", "transition:REJECTED"]


async def test_a_paid_order_whose_reservation_is_about_to_lapse_is_voided_not_charged(
    client: Client,
) -> None:
    world.reserve_committed_ago = timedelta(seconds=600 - 30)  # 30 s of it left
    view = await run(client, new_order(reservation_ttl_s=600), "reservation-lapsing")
    assert (view.status, view.rejection) == ("REJECTED", "PAYMENT_TIMEOUT")
    assert "capture" not in world.calls and "commit" not in world.calls
    assert world.calls[-3:] == ["void", "release", "transition:REJECTED"]


async def test_a_payment_step_landing_with_the_unpaid_timeout_is_taken(
    env: WorkflowEnvironment, others: Client
) -> None:
    # With the orders worker away, the payment timer fires and the customer's step
    # arrives: the next worker gets both in one workflow task (TimerFired, then the
    # update, in its history). The step came in time: the SDK applies the update
    # before the timer, and the wait's condition holds before its timeout is seen.
    world.card = "action"
    order = new_order(payment_timeout_s=900)
    async with orders_worker(env, cached=False):
        handle = await others.start_workflow(
            OrderWorkflow.run, order, id=order_workflow_id(order.order_id), task_queue=ORDERS_QUEUE
        )
        await awaiting_payment(handle)
    await env.sleep(timedelta(seconds=901))
    completion = asyncio.create_task(
        handle.execute_update(
            OrderWorkflow.complete_payment,
            CompletePaymentInput("tok_after_action", order_id=order_id_of(handle)),
            id="complete-payment",
        )
    )
    # The update must be on the server before the next worker polls, so that its first
    # workflow task holds both the fired timer and the update.
    await update_admitted(others, handle.id, "complete-payment")
    async with orders_worker(env, cached=False):
        answered = await completion
        final = await handle.result()
    assert answered.status != "REJECTED"
    assert (final.status, final.rejection) == ("COMPLETED", "")
    assert world.calls.count("authorize") == 2
    assert "release" not in world.calls


async def test_a_completed_payment_action_lets_the_order_complete(client: Client) -> None:
    order, handle = await started_awaiting_payment(client)
    view = await handle.query(OrderWorkflow.status)
    assert view.next_action_url == "https://psp.test/3ds/1"
    # Listed as waiting for its payment in the Temporal UI (visibility).
    attributes = {
        key.name: value for key, value in (await handle.describe()).typed_search_attributes
    }
    assert (attributes["OrderStatus"], attributes["PaymentOutcome"]) == (
        "AWAITING_PAYMENT",
        "requires_action",
    )
    await handle.execute_update(
        OrderWorkflow.complete_payment,
        CompletePaymentInput("tok_after_action", order_id=order_id_of(handle)),
    )
    assert (await handle.result()).status == "COMPLETED"
    await keep_history(client, handle.id, "payment-action")
    assert world.calls.count("authorize") == 2
    # The first authorization, replaced by the second, is voided at once.
    assert world.calls[world.calls.index("authorize") + 1 :][:3] == [
        "authorize",
        "void",
        "transition:CONFIRMED",
    ]
    assert world.voided == [f"{order.order_id}:authorize:1:void"]


@pytest.mark.parametrize(
    "update",
    [
        (OrderWorkflow.complete_payment, CompletePaymentInput("tok_stolen", order_id="another")),
        (OrderWorkflow.cancel_order, CancelInput("cust-2", order_id="another")),
        (OrderWorkflow.cancel_order, CancelInput("cust-2")),
    ],
    ids=["payment-for-another-order", "cancel-for-another-order", "cancel-naming-no-order"],
)
async def test_an_update_naming_another_order_is_refused(
    client: Client, update: tuple[Any, Any]
) -> None:
    # An update's payload copied from another order's history (encrypted, so the
    # workers take it) acted on this one: a cancel, or another customer's card token.
    order, handle = await started_awaiting_payment(client, payment_timeout_s=900)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(*update)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "WrongOrder"
    assert (await handle.query(OrderWorkflow.status)).status == "AWAITING_PAYMENT"
    assert world.calls.count("authorize") == 1
    await handle.execute_update(
        OrderWorkflow.complete_payment,
        CompletePaymentInput("tok_after_action", order_id=order.order_id),
    )
    assert (await handle.result()).status == "COMPLETED"


async def paid_after_a_refused_void(client: Client) -> tuple[OrderInput, WorkflowHandle[Any, Any]]:
    """A 3-D Secure order paid on its second attempt, the first one's void refused for
    good by payments; until the run has closed."""
    world.refused_voids.add(":authorize:1:void")
    order, handle = await started_awaiting_payment(client)
    await handle.execute_update(
        OrderWorkflow.complete_payment,
        CompletePaymentInput("tok_after_action", order_id=order_id_of(handle)),
    )
    await closed(handle)
    return order, handle


async def test_a_refused_void_of_a_replaced_authorization_is_logged_and_the_order_completes(
    client: Client,
) -> None:
    # Before, the workflow failed with the second authorization held, the stock
    # reserved and the order PENDING for ever.
    order, handle = await paid_after_a_refused_void(client)
    assert (await handle.result()).status == "COMPLETED"
    assert world.voided == [f"{order.order_id}:authorize:1:void"]
    assert world.calls[world.calls.index("void") :] == [
        "void",
        "transition:CONFIRMED",
        "capture",
        "commit",
        "transition:COMPLETED",
    ]
    await keep_history(client, handle.id, "superseded-void-refused")


async def test_a_payment_asking_for_the_customer_again_and_again_is_given_up(
    client: Client,
) -> None:
    order, handle = await started_awaiting_payment(client)
    for round_ in range(2, PAYMENT_ROUNDS + 1):
        await handle.execute_update(
            OrderWorkflow.complete_payment,
            CompletePaymentInput(f"tok_again_{round_}", order_id=order_id_of(handle)),
        )
        if round_ < PAYMENT_ROUNDS:
            await awaiting_payment(handle)  # the new token asked for the step again
    result = await handle.result()
    await keep_history(client, handle.id, "payment-rounds-capped")
    assert (result.status, result.rejection) == ("REJECTED", "PAYMENT_DECLINED")
    assert f"after {PAYMENT_ROUNDS} attempts" in result.reason
    assert world.calls.count("authorize") == PAYMENT_ROUNDS
    # Every authorization voided, the stock released, nothing captured.
    assert sorted(world.voided) == sorted(
        f"{order.order_id}:authorize:{n}:void" for n in range(1, PAYMENT_ROUNDS + 1)
    )
    assert "capture" not in world.calls and world.calls[-2:] == ["release", "transition:REJECTED"]


async def test_cancel_while_waiting_for_the_payment_action_voids_releases_and_charges_nothing(
    client: Client,
) -> None:
    order, handle = await started_awaiting_payment(client, payment_timeout_s=900)
    cancel = await handle.start_update(
        OrderWorkflow.cancel_order,
        CancelInput("cust-1", "changed mind", order_id=order_id_of(handle)),
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
    )
    view = await cancel.result()
    assert (view.status, view.reason, view.refunded_minor) == ("CANCELLED", "changed mind", 0)
    assert (await handle.result()).status == "CANCELLED"
    # The wait ends with the cancel (not the payment timeout): the authorization that
    # asked for the customer's step is voided, the stock released, nothing captured.
    assert world.calls == [
        "price",
        "record",
        "reserve",
        "authorize",
        "void",
        "release",
        "transition:CANCELLED",
    ]
    assert world.voided == [f"{order.order_id}:authorize:1:void"]
    assert world.transitions == ["CANCELLED"]
    assert world.transition_refunds["CANCELLED"] == 0
    await keep_history(client, handle.id, "cancel-awaiting-payment")


@pytest.mark.parametrize(
    ("stage", "undone"),
    [
        ("reserve", ["release"]),
        ("authorize", ["void", "release"]),
        ("capture", ["refund:None", "void", "release"]),
    ],
)
async def test_cancel_at_each_stage_undoes_what_was_done(
    client: Client, stage: str, undone: list[str]
) -> None:
    world.gates[stage] = asyncio.Event()
    order = new_order()
    handle = await client.start_workflow(
        OrderWorkflow.run, order, id=order_workflow_id(order.order_id), task_queue=ORDERS_QUEUE
    )
    await reached(stage)
    cancel = await handle.start_update(
        OrderWorkflow.cancel_order,
        CancelInput("cust-1", order_id=order_id_of(handle)),
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
    )
    world.gates[stage].set()
    view = await cancel.result()
    assert view.status == "CANCELLED"
    assert (await handle.result()).status == "CANCELLED"
    assert world.calls[-(len(undone) + 1) :] == [*undone, "transition:CANCELLED"]
    assert "commit" not in world.calls
    # What the compensation refunded reaches the order's projection and the answer.
    assert world.transition_refunds["CANCELLED"] == (2000 if stage == "capture" else 0)
    assert view.refunded_minor == (2000 if stage == "capture" else 0)
    await keep_history(client, handle.id, f"cancel-at-{stage}")


async def test_a_compensation_failing_for_good_is_named_in_the_cancelled_orders_reason(
    client: Client,
) -> None:
    # Cancelled while capturing, and payments then refuses the refund for good: the
    # customer is charged. The order (its answer, its CANCELLED transition) says so,
    # after the customer's reason; before, the reason overwrote it and only a log did.
    world.gates["capture"] = asyncio.Event()
    world.refund_refused = True
    _, handle = await started(client)
    cancel = await customer_cancels_during(
        handle, "capture", CancelInput("cust-1", "too late", order_id=order_id_of(handle))
    )
    view = await cancel.result()
    assert view.status == "CANCELLED"
    assert view.reason == "too late; refund payment failed"
    assert world.transition_reasons["CANCELLED"] == "too late; refund payment failed"
    assert (await handle.result()).reason == "too late; refund payment failed"


async def test_a_temporal_cancel_while_awaiting_payment_no_longer_shows_the_payment_step(
    client: Client,
) -> None:
    # While the compensations run (the void held here), the order no longer awaits
    # the customer: no AWAITING_PAYMENT, no link to the PSP's step.
    _, handle = await started_awaiting_payment(client, payment_timeout_s=900)
    world.gates["void"] = asyncio.Event()
    await handle.cancel()
    await reached("void")
    view = await handle.query(OrderWorkflow.status)
    assert (view.status, view.next_action_url) == ("PENDING", "")
    world.gates["void"].set()
    await cancelled_in_temporal(handle)
    assert world.transitions == ["CANCELLED"]


async def cancel_during_commit(client: Client) -> tuple[OrderView, WorkflowHandle[Any, Any]]:
    """Place an order, cancel it while its stock commit runs; the cancel's answer."""
    world.gates["commit"] = asyncio.Event()
    order = new_order()
    handle = await client.start_workflow(
        OrderWorkflow.run, order, id=order_workflow_id(order.order_id), task_queue=ORDERS_QUEUE
    )
    await reached("commit")
    cancel = await handle.start_update(
        OrderWorkflow.cancel_order,
        CancelInput("cust-1", "changed mind", order_id=order_id_of(handle)),
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
    )
    world.gates["commit"].set()
    return await cancel.result(), handle


async def test_a_cancel_during_the_stock_commit_cancels_the_completed_order(
    client: Client,
) -> None:
    # The commit does not stop for a cancel; the order completes, then the saga cancels
    # it as a cancel after completion does: everything refunded, the stock returned.
    view, handle = await cancel_during_commit(client)
    assert (view.status, view.reason, view.refunded_minor) == ("CANCELLED", "changed mind", 2000)
    assert (await handle.result()).status == "CANCELLED"
    assert world.calls[world.calls.index("commit") :] == [
        "commit",
        "transition:COMPLETED",
        "refund:None",
        "record_refund:2000:cancel",
        "restock:SKU-1:2",
    ]
    assert "void" not in world.calls[world.calls.index("commit") :]
    await keep_history(client, handle.id, "cancel-at-commit")


async def test_a_cancel_after_the_commit_that_fails_leaves_the_saga_completed(
    client: Client,
) -> None:
    # E.g. a partial refund landed first and the full amount no longer fits: the saga
    # has completed and does not fail; the update answers COMPLETED (the gateway then
    # cancels the completed order anew, from a fresh snapshot).
    world.refund_refused = True
    view, handle = await cancel_during_commit(client)
    assert view.status == "COMPLETED"
    assert (await handle.result()).status == "COMPLETED"
    assert world.calls[world.calls.index("commit") :] == [
        "commit",
        "transition:COMPLETED",
        "refund:None",
    ]
    await keep_history(client, handle.id, "cancel-at-commit-refused")


async def test_a_capture_refused_for_good_rejects_and_releases_without_a_refund(
    client: Client,
) -> None:
    world.capture_refused = True
    view = await run(client, new_order(), "capture-refused")
    assert (view.status, view.rejection) == ("REJECTED", "PAYMENT_FAILED")
    assert world.calls[-4:] == ["capture", "void", "release", "transition:REJECTED"]
    assert not [call for call in world.calls if call.startswith("refund")]
    assert "commit" not in world.calls


async def test_cancel_of_a_finished_order_is_refused(client: Client) -> None:
    order = new_order()
    await run(client, order)
    handle = client.get_workflow_handle(order_workflow_id(order.order_id))
    # A closed saga takes no update: the gateway cancels a completed order with a refund.
    with pytest.raises((WorkflowUpdateFailedError, RPCError)):
        await handle.execute_update(
            OrderWorkflow.cancel_order, CancelInput("cust-1", order_id=order_id_of(handle))
        )
    assert "refund:None" not in world.calls


async def test_a_retried_post_joins_the_same_order(client: Client) -> None:
    order = new_order()
    views = []
    for _ in range(2):
        start = post(order)
        views.append(
            await client.execute_update_with_start_workflow(
                OrderWorkflow.accept, start_workflow_operation=start
            )
        )
    assert views[0].order_id == views[1].order_id == order.order_id
    await client.get_workflow_handle(order_workflow_id(order.order_id)).result()
    assert world.calls.count("record") == 1
    assert world.calls.count("authorize") == 1


async def test_a_post_for_an_order_an_ended_run_placed_is_refused_not_accepted(
    client: Client,
) -> None:
    # Past the namespace's retention Temporal no longer holds the key's first run, and
    # a retried POST starts a second saga. Its `accept` refuses it (the gateway answers
    # the order as recorded), where it answered PENDING and the run failed just after.
    order = new_order()
    world.placed_before.add(order.order_id)
    start = post(order)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await client.execute_update_with_start_workflow(
            OrderWorkflow.accept, start_workflow_operation=start
        )
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.type == "OrderAlreadyPlaced"
    with pytest.raises(WorkflowFailureError) as failed:
        await client.get_workflow_handle(order_workflow_id(order.order_id)).result()
    assert isinstance(failed.value.cause, ApplicationError)
    assert failed.value.cause.type == "OrderAlreadyPlaced"
    assert world.calls == ["price"]  # nothing recorded, reserved or charged
    await keep_history(client, order_workflow_id(order.order_id), "placed-before")


async def test_refund_after_completion_refunds_the_amount(client: Client) -> None:
    request = RefundOrderInput(
        order_id=str(uuid.uuid4()), refund_key="r1", amount_minor=500, reason="damaged"
    )
    view = await refund_run(client, request, "refund-partial")
    assert (view.status, view.refunded_minor) == ("PARTIALLY_REFUNDED", 500)
    assert [line.sku for line in view.lines] == ["SKU-1"]
    assert world.calls == ["refund:500", "record_refund:500:refund"]


async def test_a_refund_over_what_is_left_is_refused(client: Client) -> None:
    world.refunded = 1900
    request = RefundOrderInput(order_id=str(uuid.uuid4()), refund_key="r2", amount_minor=500)
    with pytest.raises(Exception) as raised:
        await client.execute_workflow(
            RefundOrderWorkflow.run,
            request,
            id=f"refund-{uuid.uuid4()}",
            task_queue=ORDERS_QUEUE,
            execution_timeout=timedelta(seconds=30),
        )
    assert "RefundAmountInvalid" in repr(raised.value.__cause__) or "between 1 and 100" in str(
        raised.value.__cause__
    )
    assert not any(c.startswith("refund:") for c in world.calls)


async def test_cancel_after_completion_refunds_everything_and_returns_the_stock(
    client: Client,
) -> None:
    request = RefundOrderInput(
        order_id=str(uuid.uuid4()),
        refund_key="cancel",
        amount_minor=None,
        cancel=True,
        requested_by="cust-1",
    )
    view = await refund_run(client, request, "refund-cancel")
    assert view.status == "CANCELLED"
    # Payments is asked for all it has left (None), as the saga's cancel asks under the
    # same key, and the refund is recorded with what it refunded. Recorded before the
    # restock: a restock that fails leaves the refund on the order.
    assert world.calls == ["refund:None", "record_refund:2000:cancel", "restock:SKU-1:2"]


async def test_a_cancel_meets_the_sagas_refund_of_what_was_left_under_their_key(
    client: Client,
) -> None:
    # The saga's cancel of its completed order asked payments for what was left, under
    # the key `cancel`, after a customer's partial refund of 500: refunded 1500, not
    # yet recorded. The customer's cancel (the gateway's RefundOrder) asks for what is
    # left too, so payments answers it the saga's refund. Before, it asked for the 1500
    # the projection showed left, and payments refused the key's other request
    # (IdempotencyKeyConflict: a 409 to a customer who sent no key).
    request = cancel_refund(str(uuid.uuid4()), CancelInput("cust-1", "changed mind"))
    world.refunded, world.statuses[request.order_id] = 500, "PARTIALLY_REFUNDED"
    sagas = RefundResult("pay-1", "ref-1", 1500, 2000, "EUR", "refunded")
    world.refunds_made[f"{request.order_id}:refund:cancel"] = (None, sagas)
    view = await (await start_refund(client, request)).result()
    assert (view.status, view.refunded_minor) == ("CANCELLED", 2000)
    assert world.calls == ["refund:None", "record_refund:1500:cancel", "restock:SKU-1:2"]


async def test_a_cancel_after_a_partial_refund_not_yet_recorded_refunds_what_is_left(
    client: Client,
) -> None:
    # A customer's partial refund of 500 was made at payments; its record in the
    # projection has not landed, so the snapshot shows 2000 left. Payments refunds the
    # 1500 it has left. Before, the cancel asked for 2000 and was refused
    # (PaymentAmountExceeded) until that record landed.
    request = cancel_refund(str(uuid.uuid4()), CancelInput("cust-1", "changed mind"))
    world.unrecorded_refund_landing = 500
    view = await (await start_refund(client, request)).result()
    assert view.status == "CANCELLED"
    assert world.calls == ["refund:None", "record_refund:1500:cancel", "restock:SKU-1:2"]


# A cancel requested in Temporal (the web UI's Cancel, `temporal workflow cancel`) ----


async def cancel_requested_of_an_activity(handle: WorkflowHandle[Any, Any]) -> None:
    """Until the saga has asked Temporal to cancel the activity it waited on."""
    wanted = EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED
    for _ in range(500):
        if any([e.event_type == wanted async for e in handle.fetch_history_events()]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the saga never asked to cancel its activity")


async def started(
    client: Client, *, task_timeout: timedelta | None = None
) -> tuple[OrderInput, WorkflowHandle[Any, Any]]:
    """A new order's saga, started."""
    order = new_order()
    handle = await client.start_workflow(
        OrderWorkflow.run,
        order,
        id=order_workflow_id(order.order_id),
        task_queue=ORDERS_QUEUE,
        task_timeout=task_timeout,
    )
    return order, handle


def order_id_of(handle: WorkflowHandle[Any, Any]) -> str:
    """The order a saga's handle runs (its id is order_workflow_id's)."""
    return handle.id.removeprefix("order-")


async def customer_cancels_during(
    handle: WorkflowHandle[Any, Any], step: str, cancel: CancelInput | None = None
) -> WorkflowUpdateHandle[OrderView]:
    """The customer's cancel, accepted while `step` waits at its gate; then the step
    goes on."""
    await reached(step)
    update = await handle.start_update(
        OrderWorkflow.cancel_order,
        cancel or CancelInput("cust-1", order_id=order_id_of(handle)),
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
    )
    world.gates[step].set()
    return update


async def temporal_cancel_during(handle: WorkflowHandle[Any, Any], call: str, gate: str) -> None:
    """A cancel requested in Temporal once `call` was made, whose attempt (held at
    `gate`) then takes effect all the same (the services' activities never hear of it)."""
    await reached(call)
    await handle.cancel()
    await cancel_requested_of_an_activity(handle)
    world.gates[gate].set()


async def cancelled_in_temporal(handle: WorkflowHandle[Any, Any]) -> None:
    with pytest.raises(WorkflowFailureError) as ended:
        await handle.result()
    assert isinstance(ended.value.cause, CancelledError), ended.value.cause


async def cancelled_in_temporal_during(
    client: Client, step: str
) -> tuple[OrderInput, WorkflowHandle[Any, Any]]:
    """A saga cancelled in Temporal while `step` runs, whose interrupted attempt then
    takes effect after all (the services' activities never hear of the cancel)."""
    world.gates[step] = asyncio.Event()
    order, handle = await started(client)
    await temporal_cancel_during(handle, step, step)
    await cancelled_in_temporal(handle)
    return order, handle


async def test_a_temporal_cancel_during_the_capture_refunds_what_it_captured(
    client: Client,
) -> None:
    _, handle = await cancelled_in_temporal_during(client, "capture")
    # The capture is run to its end by its key, then undone: refunded, the (captured)
    # authorization's void refused harmlessly, the stock released, the order CANCELLED.
    assert world.calls.count("capture") == 2
    assert world.calls[-4:] == ["refund:None", "void", "release", "transition:CANCELLED"]
    assert world.transitions == ["CONFIRMED", "CANCELLED"]
    await keep_history(client, handle.id, "temporal-cancel-at-capture")


async def test_a_temporal_cancel_during_a_capture_refused_for_good_refunds_nothing(
    client: Client,
) -> None:
    # The capture, run to its end after the cancel, is refused for good: nothing was
    # captured. Its refund still ran, was refused by payments, and the order's reason
    # said "refund payment failed" (read by support as: the customer may be charged).
    world.capture_refused = True
    _, handle = await cancelled_in_temporal_during(client, "capture")
    assert world.calls.count("capture") == 2
    assert not [call for call in world.calls if call.startswith("refund")]
    assert world.calls[-3:] == ["void", "release", "transition:CANCELLED"]
    assert world.transitions == ["CONFIRMED", "CANCELLED"]
    await keep_history(client, handle.id, "temporal-cancel-capture-refused")


async def test_a_temporal_cancel_while_awaiting_the_payment_action_voids_and_releases(
    client: Client,
) -> None:
    _, handle = await started_awaiting_payment(client, payment_timeout_s=900)
    await handle.cancel()
    await cancelled_in_temporal(handle)
    assert world.calls[-3:] == ["void", "release", "transition:CANCELLED"]
    assert "capture" not in world.calls
    assert world.transitions == ["CANCELLED"]
    await keep_history(client, handle.id, "temporal-cancel-awaiting-payment")


async def test_a_temporal_cancel_during_the_stock_commit_cancels_the_order_and_restocks(
    client: Client,
) -> None:
    # The commit is run to its end by its key: the stock is committed, and a release
    # would return none of it. The order is cancelled as a customer's cancel of a
    # completed order is: everything refunded under the key `cancel`, the stock
    # restocked under the `cancel-restock` keys (a gateway cancel of the same order
    # meets it), the order CANCELLED.
    order, handle = await cancelled_in_temporal_during(client, "commit")
    assert world.calls.count("commit") == 2
    assert world.calls[world.calls.index("commit") + 1 :] == [
        "commit",
        "transition:COMPLETED",
        "refund:None",
        "record_refund:2000:cancel",
        "restock:SKU-1:2",
    ]
    assert world.refund_keys == [f"{order.order_id}:refund:cancel"]
    assert world.restock_keys == [f"{order.order_id}:cancel-restock:1"]
    assert (world.statuses[order.order_id], world.refunded) == ("CANCELLED", 2000)
    await keep_history(client, handle.id, "temporal-cancel-at-commit")


async def test_a_temporal_cancel_cutting_the_completed_transition_short_cancels_the_order(
    client: Client,
) -> None:
    # The COMPLETED transition was written, then its step cancelled: the CANCELLED
    # transition the compensations ended with was refused (the order has ended), which
    # left the order COMPLETED with its money refunded and its stock gone.
    world.hold_completed_transition = True
    order = new_order()
    handle = await client.start_workflow(
        OrderWorkflow.run,
        order,
        id=order_workflow_id(order.order_id),
        task_queue=ORDERS_QUEUE,
        # The held local activity keeps the workflow task open; the cancel comes with
        # the next one, which the worker asks for at 80 % of this (a heartbeat).
        task_timeout=timedelta(seconds=2),
    )
    await reached("transition:COMPLETED")
    await handle.cancel()
    await cancelled_in_temporal(handle)
    # Run again by its key (a no-op on the projection, which holds it), then cancelled.
    assert world.calls[world.calls.index("commit") + 1 :] == [
        "transition:COMPLETED",
        "transition:COMPLETED",
        "refund:None",
        "record_refund:2000:cancel",
        "restock:SKU-1:2",
    ]
    assert world.statuses[order.order_id] == "CANCELLED"
    assert world.refunded == 2000
    assert world.refund_keys == [f"{order.order_id}:refund:cancel"]
    assert world.restock_keys == [f"{order.order_id}:cancel-restock:1"]
    assert "release" not in world.calls and "void" not in world.calls
    await keep_history(client, handle.id, "temporal-cancel-at-completed-transition")


async def closed(handle: WorkflowHandle[Any, Any]) -> None:
    """Until the run has closed, however it ended (the test then reads how)."""
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()


async def cancelled_in_temporal_during_own_write(
    client: Client, write: str, *, customer_cancel_at: str = ""
) -> tuple[OrderInput, WorkflowHandle[Any, Any]]:
    """A saga whose orders database stops answering its `write` ("record", or a
    transition's status), cancelled in Temporal meanwhile; until the run has closed.
    `customer_cancel_at`: a step during which the customer cancels first."""
    world.stalled_writes.add(write)
    if customer_cancel_at:
        world.gates[customer_cancel_at] = asyncio.Event()
    # The stalled local activity keeps the workflow task open; the cancel comes with
    # the next one, which the worker asks for at 80 % of this (a heartbeat).
    order, handle = await started(client, task_timeout=timedelta(seconds=2))
    if customer_cancel_at:
        await customer_cancels_during(handle, customer_cancel_at)
    await reached(write if write == "record" else f"transition:{write}")
    await handle.cancel()
    await closed(handle)
    return order, handle


async def test_a_temporal_cancel_cutting_the_order_record_short_records_and_cancels_it(
    client: Client,
) -> None:
    # The record is run again to its end by its key, then the order is cancelled with
    # nothing else done; before, it was left PENDING in the projection for ever.
    order, handle = await cancelled_in_temporal_during_own_write(client, "record")
    assert world.statuses.get(order.order_id) == "CANCELLED"
    await cancelled_in_temporal(handle)
    assert world.calls == ["price", "record", "record", "transition:CANCELLED"]
    await keep_history(client, handle.id, "temporal-cancel-at-record")


async def test_a_temporal_cancel_cutting_the_cancelled_transition_short_still_records_it(
    client: Client,
) -> None:
    # The customer's cancel has been carried out (the stock released); the operator
    # cancels the run while its CANCELLED transition hangs.
    order, handle = await cancelled_in_temporal_during_own_write(
        client, "CANCELLED", customer_cancel_at="reserve"
    )
    assert world.statuses[order.order_id] == "CANCELLED"
    await cancelled_in_temporal(handle)
    assert world.calls[-3:] == ["release", "transition:CANCELLED", "transition:CANCELLED"]
    await keep_history(client, handle.id, "temporal-cancel-at-cancelled-transition")


async def test_a_temporal_cancel_cutting_the_rejected_transition_short_still_records_it(
    client: Client,
) -> None:
    # The saga's own end, which the cancel only cut short: REJECTED, recorded so.
    world.card = "decline"
    order, handle = await cancelled_in_temporal_during_own_write(client, "REJECTED")
    assert world.statuses[order.order_id] == "REJECTED"
    view = await handle.result()
    assert (view.status, view.rejection) == ("REJECTED", "PAYMENT_DECLINED")
    assert world.calls[-4:] == ["void", "release", "transition:REJECTED", "transition:REJECTED"]
    await keep_history(client, handle.id, "temporal-cancel-at-rejected-transition")


async def cancelled_in_temporal_at_pricing(client: Client) -> WorkflowHandle[Any, Any]:
    """A saga cancelled in Temporal while its order is priced; until the run has closed."""
    world.gates["price"] = asyncio.Event()  # never opened: catalog does not answer
    # task_timeout: see cancelled_in_temporal_during_own_write
    _, handle = await started(client, task_timeout=timedelta(seconds=2))
    await reached("price")
    await handle.cancel()
    await closed(handle)
    return handle


async def test_a_temporal_cancel_during_pricing_ends_the_run_with_nothing_recorded_or_counted(
    client: Client,
) -> None:
    # Not a catalog outage: no PRICING_UNAVAILABLE rejection, no failed saga counted.
    handle = await cancelled_in_temporal_at_pricing(client)
    assert world.calls == ["price"]
    await cancelled_in_temporal(handle)
    await keep_history(client, handle.id, "temporal-cancel-at-pricing")


async def posted(
    client: Client, order: OrderInput, *, task_timeout: timedelta | None = None
) -> asyncio.Task[OrderView]:
    """The POST's Update-With-Start for `order`, sent; its `accept` answer to come."""
    digest = request_digest(order.lines, order.currency, order.expected_total_minor)
    start = post(order, task_timeout=task_timeout)
    answer = asyncio.create_task(
        client.execute_update_with_start_workflow(
            OrderWorkflow.accept, digest, start_workflow_operation=start
        )
    )
    await start.workflow_handle()
    return answer


async def test_a_temporal_cancel_cutting_the_unrecorded_count_short_still_answers_the_rejection(
    client: Client,
) -> None:
    # Rejected at pricing, then cancelled in Temporal while the saga counted it: the
    # count is run to its end and the saga ends REJECTED, the POST answered with the
    # rejection. Before, the cancel escaped the run: the POST got no answer (a 502).
    world.unknown_sku = True
    world.stalled_writes.add("count")
    order = new_order()
    # task_timeout: see cancelled_in_temporal_during_own_write
    answer = await posted(client, order, task_timeout=timedelta(seconds=2))
    handle = client.get_workflow_handle_for(OrderWorkflow.run, order_workflow_id(order.order_id))
    await reached("count:PRODUCT_UNAVAILABLE")
    await handle.cancel()
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await answer
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.type == "PRODUCT_UNAVAILABLE"
    view = await handle.result()
    assert (view.status, view.rejection) == ("REJECTED", "PRODUCT_UNAVAILABLE")
    # Nothing else done: the count cut short, then run again to its end (the worker may
    # start it more than once meanwhile, as it replays the run's task: the SDK's business).
    assert world.calls[0] == "price" and set(world.calls[1:]) == {"count:PRODUCT_UNAVAILABLE"}
    await keep_history(client, handle.id, "temporal-cancel-at-count")


async def cancelled_in_temporal_during_compensating_refund(
    client: Client,
) -> tuple[WorkflowHandle[Any, Any], WorkflowUpdateHandle[OrderView]]:
    """A customer's cancel after the capture, whose compensating refund is cut short by
    a cancel requested in Temporal and takes effect all the same; until the run has
    closed. The run, and the customer's cancel."""
    world.gates["capture"] = asyncio.Event()
    world.gates["refund"] = asyncio.Event()
    _, handle = await started(client)
    cancel = await customer_cancels_during(handle, "capture")
    await temporal_cancel_during(handle, "refund:None", "refund")
    await closed(handle)
    return handle, cancel


@pytest.mark.parametrize("refused", [False, True], ids=["refunded", "refused-for-good"])
async def test_a_temporal_cancel_during_the_compensating_refund_records_what_it_refunded(
    client: Client, refused: bool
) -> None:
    # Refused: the refund, asked again by its key, is refused for good and the customer
    # stays charged. The order says so, as for any compensation failing for good;
    # before, the refusal was taken for the cancel itself and left no trace.
    world.refund_refused = refused
    handle, cancel = await cancelled_in_temporal_during_compensating_refund(client)
    await cancelled_in_temporal(handle)
    # Run to its end by its key, then the rest undone; the CANCELLED transition carries
    # the refund (before, 0: the run to its end's result was dropped).
    assert world.calls[-5:] == [
        "refund:None",
        "refund:None",
        "void",
        "release",
        "transition:CANCELLED",
    ]
    refunded = 0 if refused else 2000
    assert world.transition_refunds["CANCELLED"] == refunded
    answer = await cancel.result()
    assert (answer.status, answer.refunded_minor) == ("CANCELLED", refunded)
    failed = "; refund payment failed"
    assert world.transition_reasons["CANCELLED"].endswith(failed) is refused
    assert answer.reason.endswith(failed) is refused
    if not refused:
        await keep_history(client, handle.id, "temporal-cancel-at-compensating-refund")


async def cancelled_in_temporal_while_restocking(
    client: Client,
) -> tuple[OrderInput, WorkflowHandle[Any, Any]]:
    """A customer's cancel during the stock commit, which the saga carries out once the
    order completed; a cancel requested in Temporal during the first line's restock,
    which then takes effect all the same. Until the run has closed."""
    world.order_lines = [
        PricedLine("SKU-1", "T", 1, 1000, 1000),
        PricedLine("SKU-2", "T", 1, 1000, 1000),
    ]
    world.gates["commit"] = asyncio.Event()
    world.gates["restock"] = asyncio.Event()
    order, handle = await started(client)
    await customer_cancels_during(
        handle, "commit", CancelInput("cust-1", "changed mind", order_id=order_id_of(handle))
    )
    await temporal_cancel_during(handle, "restock:SKU-1:1", "restock")
    await closed(handle)
    return order, handle


async def test_a_temporal_cancel_during_the_cancels_restock_restocks_every_line(
    client: Client,
) -> None:
    # The cancel of the completed order is run again from a fresh snapshot by the same
    # keys (the refund recorded: the lines restocked); before, the failure was logged
    # as the cancel's refusal and the second line was never restocked.
    order, handle = await cancelled_in_temporal_while_restocking(client)
    assert world.calls[world.calls.index("commit") :] == [
        "commit",
        "transition:COMPLETED",
        "refund:None",
        "record_refund:2000:cancel",
        "restock:SKU-1:1",
        "restock:SKU-1:1",
        "restock:SKU-2:1",
    ]
    assert sorted(set(world.restock_keys)) == [
        f"{order.order_id}:cancel-restock:{n}" for n in (1, 2)
    ]
    assert (world.statuses[order.order_id], world.refunded) == ("CANCELLED", 2000)
    await cancelled_in_temporal(handle)  # as every cancel requested in Temporal ends
    await keep_history(client, handle.id, "temporal-cancel-at-cancel-restock")


@pytest.mark.parametrize(
    ("landing", "recorded_refunded"),
    [("partial_refund_landing", 2000), ("unrecorded_refund_landing", 1500)],
    ids=["recorded", "unrecorded"],
)
async def test_a_temporal_cancel_after_the_commit_refunds_what_a_partial_refund_left(
    client: Client, landing: str, recorded_refunded: int
) -> None:
    # A customer's partial refund of 500 landed as the saga's cancel of its completed
    # order reached payments: recorded in the orders projection already, or made at
    # payments and not yet recorded (the snapshot shows nothing refunded, payments
    # knows better). The cancel asks payments for whatever it has left, so it is
    # refunded the rest at once. Before, it asked for the snapshot's 2000, was refused
    # (PaymentAmountExceeded) and asked again for what was left (REFUSED_CANCEL_RETRIED,
    # whose branch the committed history order-temporal-cancel-at-commit-refund-refused
    # keeps); before that, the refusal was logged and the stock never returned.
    setattr(world, landing, 500)
    order, _ = await cancelled_in_temporal_during(client, "commit")
    assert world.calls[world.calls.index("commit") :] == [
        "commit",
        "commit",
        "transition:COMPLETED",
        "refund:None",
        "record_refund:1500:cancel",
        "restock:SKU-1:2",
    ]
    assert world.refund_keys == [f"{order.order_id}:refund:cancel"]
    assert world.restock_keys == [f"{order.order_id}:cancel-restock:1"]
    # An unrecorded 500 is recorded by the customer's own RefundOrder, after.
    assert (world.statuses[order.order_id], world.refunded) == ("CANCELLED", recorded_refunded)


# RefundOrder (the gateway's refund, or cancel, of a completed order) -----------------


def two_line_order() -> RefundOrderInput:
    """The cancel of a completed order of two lines, as the gateway starts it."""
    world.order_lines = [
        PricedLine("SKU-1", "T", 1, 1000, 1000),
        PricedLine("SKU-2", "T", 1, 1000, 1000),
    ]
    return cancel_refund(str(uuid.uuid4()), CancelInput("cust-1", "changed mind"))


async def start_refund(
    client: Client, request: RefundOrderInput, *, task_timeout: timedelta | None = None
) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        RefundOrderWorkflow.run,
        request,
        id=f"refund-{uuid.uuid4()}",
        task_queue=ORDERS_QUEUE,
        task_timeout=task_timeout,
    )


async def refund_cancelled_in_temporal_during(
    client: Client, call: str, gate: str
) -> tuple[RefundOrderInput, WorkflowHandle[Any, Any]]:
    """A cancel of a completed order cancelled in Temporal once `call` was made, whose
    attempt (held at `gate`) then takes effect all the same; until the run has closed."""
    request = two_line_order()
    world.gates[gate] = asyncio.Event()
    handle = await start_refund(client, request)
    await temporal_cancel_during(handle, call, gate)
    await closed(handle)
    return request, handle


def refunded_and_restocked(request: RefundOrderInput) -> None:
    """The cancel's refund recorded once, and both lines restocked by their keys."""
    assert (world.statuses[request.order_id], world.refunded) == ("CANCELLED", 2000)
    assert world.recorded_refunds == {(request.order_id, "cancel")}
    assert sorted(set(world.restock_keys)) == [
        f"{request.order_id}:cancel-restock:{n}" for n in (1, 2)
    ]


async def completed_with_the_cancelled_order(handle: WorkflowHandle[Any, Any]) -> None:
    """A RefundOrder cancelled in Temporal whose steps all ran to their end completes
    with the order they left (a retry with its key reads that, not a new run)."""
    view = await handle.result()
    assert (view.status, view.refunded_minor) == ("CANCELLED", 2000)


async def test_a_temporal_cancel_during_a_cancels_restock_restocks_every_line(
    client: Client,
) -> None:
    # The restock cut short is run again by its key, then the next line's; the run
    # completes with the cancelled order. Before, the second line was never restocked,
    # and every retry was refused (the order CANCELLED: NotRefundable).
    request, handle = await refund_cancelled_in_temporal_during(
        client, "restock:SKU-1:1", "restock"
    )
    assert world.calls == [
        "refund:None",
        "record_refund:2000:cancel",
        "restock:SKU-1:1",
        "restock:SKU-1:1",
        "restock:SKU-2:1",
    ]
    refunded_and_restocked(request)
    await completed_with_the_cancelled_order(handle)
    await keep_history(client, handle.id, "refund-cancel-temporal-cancel-at-restock")


async def test_a_temporal_cancel_during_a_cancels_refund_records_it_and_restocks(
    client: Client,
) -> None:
    # The refund cut short is asked again by its key (payments answers the first
    # attempt's result), then recorded, then the lines restocked. Before, the money was
    # refunded at payments while the order read COMPLETED.
    request, handle = await refund_cancelled_in_temporal_during(client, "refund:None", "refund")
    assert world.calls == [
        "refund:None",
        "refund:None",
        "record_refund:2000:cancel",
        "restock:SKU-1:1",
        "restock:SKU-2:1",
    ]
    assert world.refund_keys == [f"{request.order_id}:refund:cancel"] * 2
    refunded_and_restocked(request)
    await completed_with_the_cancelled_order(handle)
    await keep_history(client, handle.id, "refund-cancel-temporal-cancel-at-refund")


async def test_a_temporal_cancel_cutting_a_cancels_record_short_records_it_and_restocks(
    client: Client,
) -> None:
    request = two_line_order()
    world.stalled_writes.add("record_refund")
    # task_timeout: see cancelled_in_temporal_during_own_write
    handle = await start_refund(client, request, task_timeout=timedelta(seconds=2))
    await reached("record_refund:2000:cancel")
    await handle.cancel()
    await closed(handle)
    assert world.calls == [
        "refund:None",
        "record_refund:2000:cancel",
        "record_refund:2000:cancel",
        "restock:SKU-1:1",
        "restock:SKU-2:1",
    ]
    refunded_and_restocked(request)
    await completed_with_the_cancelled_order(handle)
    await keep_history(client, handle.id, "refund-cancel-temporal-cancel-at-record")


def the_gateways(client: Client) -> Upstream:
    """The gateway's Temporal calls (its services unused)."""
    return Upstream(SimpleNamespace(get=lambda _: None), client, GatewayMetrics())  # type: ignore[arg-type]


async def test_a_refund_retried_after_a_temporal_cancel_answers_the_refunded_order(
    client: Client,
) -> None:
    # A customer's full refund, started as the gateway starts it (idempotent by its
    # Idempotency-Key), cancelled in Temporal during the refund at payments: run to its
    # end and recorded. The client, whose request timed out or lost its answer, retries
    # with the same key: the run completed with the refunded order, which the retry
    # reads. Before, the run ended cancelled (its waiting request got 502), the gateway
    # started a new run for the retry, which found the refund recorded and was refused
    # (NotRefundable, a 409), though the money was refunded.
    request = RefundOrderInput(
        order_id=str(uuid.uuid4()),
        refund_key="r1",
        amount_minor=None,
        reason="damaged",
        requested_by="cust-1",
    )
    start: StartOptions = {
        "id": refund_workflow_id(request.order_id, request.refund_key),
        "task_queue": ORDERS_QUEUE,
        "budget_s": 30.0,
        "idempotent": True,
    }
    gateway = the_gateways(client)
    world.gates["refund"] = asyncio.Event()
    first = await gateway.start_workflow(RefundOrderWorkflow.run, request, **start)
    await temporal_cancel_during(first, "refund:2000", "refund")
    await closed(first)
    view = await gateway.execute_workflow(RefundOrderWorkflow.run, request, **start)
    assert (view.status, view.refunded_minor) == ("REFUNDED", 2000)
    assert view == await first.result()
    # Refunded once, by the first run: the attempt cut short and its run to its end, by
    # the same key; recorded once (the worker may run the local record again as it
    # replays the run's task: the SDK's business).
    assert [call for call in world.calls if call.startswith("refund:")] == ["refund:2000"] * 2
    assert world.refund_keys == [f"{request.order_id}:refund:r1"] * 2
    assert world.recorded_refunds == {(request.order_id, "r1")}
    assert (world.statuses[request.order_id], world.refunded) == ("REFUNDED", 2000)


async def test_a_retried_cancel_finishes_the_restock_of_a_run_cut_short(client: Client) -> None:
    # The first run recorded the cancel, then was terminated during its first restock
    # (a terminated run runs none of its own code). The retry finds the order CANCELLED by the
    # cancel and restocks every line by the same keys; before, it was refused
    # (NotRefundable) and the second line's stock was lost.
    request = two_line_order()
    world.gates["restock"] = asyncio.Event()
    first = await start_refund(client, request)
    await reached("restock:SKU-1:1")
    await first.terminate("stuck")
    world.gates["restock"].set()
    view = await refund_run(client, request, "refund-cancel-restocked-again")
    assert (view.status, view.refunded_minor) == ("CANCELLED", 2000)
    assert world.calls == [
        "refund:None",
        "record_refund:2000:cancel",
        "restock:SKU-1:1",
        "restock:SKU-1:1",
        "restock:SKU-2:1",
    ]
    refunded_and_restocked(request)


@pytest.mark.parametrize(
    "recorded_ago",
    [None, timedelta(days=30)],
    ids=["cancelled-before-completion", "cancelled-a-month-ago"],
)
async def test_a_cancel_of_a_cancelled_order_restocks_nothing_it_cannot_know_is_owed(
    client: Client, recorded_ago: timedelta | None
) -> None:
    # An order the saga cancelled before completion (released, never committed) has no
    # cancel after completion recorded; one cancelled a month ago, past what inventory
    # remembers of its restock keys, could be restocked twice. Both are refused.
    request = two_line_order()
    world.statuses[request.order_id] = "CANCELLED"
    if recorded_ago is not None:
        recorded = await world.clock() - recorded_ago
        world.cancels_recorded[request.order_id] = recorded.isoformat()
    handle = await start_refund(client, request)
    with pytest.raises(WorkflowFailureError) as refused:
        await handle.result()
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.type == "NotRefundable"
    assert world.calls == []


@pytest.mark.parametrize("spelling", [str.upper, "urn:uuid:{}".format], ids=["upper", "urn"])
async def test_a_refund_started_by_hand_with_the_order_id_spelt_otherwise_keys_by_the_order(
    client: Client, spelling: Callable[[str], str]
) -> None:
    # An operator starting RefundOrder by hand (docs/orders.md) with the id in capitals
    # or as a urn: every step is keyed by the order's id as the saga wrote it. Before,
    # the restock keys differed from the first cancel's, so a cancelled order's lines
    # were restocked a second time.
    request = two_line_order()
    spelt = replace(request, order_id=spelling(request.order_id))
    view = await (await start_refund(client, spelt)).result()
    assert view.order_id == request.order_id
    refunded_and_restocked(request)
    assert world.refund_keys == [f"{request.order_id}:refund:cancel"]


async def test_a_refund_of_what_is_no_order_id_fails_at_once(client: Client) -> None:
    request = replace(two_line_order(), order_id="no-such-order")
    with pytest.raises(WorkflowFailureError) as raised:
        await (await start_refund(client, request)).result()
    assert "InvalidOrderId" in repr(raised.value.__cause__)
    assert world.refund_keys == []


# A cancel in the workflow task that also holds a step's outcome ---------------------
# The step ended with its worker away, then the cancel came: the next worker gets both
# in one task, and temporalio raises a bare CancelledError at the step's await, the
# outcome dropped. No "to its end" path saw it (CANCEL_WITH_STEP_OUTCOME).


async def step_ended_then_cancelled(
    env: WorkflowEnvironment, client: Client, start: Callable[[], Awaitable[Any]], call: str
) -> WorkflowHandle[Any, Any]:
    """Started under an orders worker that then goes; `call` (held at its gate) ends, a
    cancel is requested in Temporal, and a fresh orders worker takes both at once."""
    gate = call.split(":")[0]
    world.gates[gate] = asyncio.Event()
    async with orders_worker(env, cached=False):
        handle = await start()
        await reached(call)
    world.gates[gate].set()
    async with asyncio.timeout(30):
        while True:
            events = [e.event_type for e in (await handle.fetch_history()).events]
            if events[-2:] == [
                EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
                EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
            ]:
                break
            await asyncio.sleep(0.05)
    await handle.cancel()
    async with orders_worker(env, cached=False):
        await closed(handle)
    return handle


async def test_a_temporal_cancel_with_the_commits_outcome_cancels_the_order_and_restocks(
    env: WorkflowEnvironment, others: Client
) -> None:
    # Before: the commit's outcome dropped, the saga compensated with a release (a no-op
    # on committed stock): the customer refunded, the units committed for good.
    order = new_order()

    async def start() -> WorkflowHandle[Any, Any]:
        return await others.start_workflow(
            OrderWorkflow.run, order, id=order_workflow_id(order.order_id), task_queue=ORDERS_QUEUE
        )

    handle = await step_ended_then_cancelled(env, others, start, "commit")
    await cancelled_in_temporal(handle)
    assert world.calls[world.calls.index("commit") :] == [
        "commit",
        "commit",
        "transition:COMPLETED",
        "refund:None",
        "record_refund:2000:cancel",
        "restock:SKU-1:2",
    ]
    assert "release" not in world.calls
    assert world.restock_keys == [f"{order.order_id}:cancel-restock:1"]
    assert (world.statuses[order.order_id], world.refunded) == ("CANCELLED", 2000)
    await keep_history(others, handle.id, "temporal-cancel-with-commit-outcome")


@pytest.mark.parametrize(
    ("call", "step", "before_the_rest"),
    [
        ("refund:None", "refund", ["refund:None", "refund:None"]),
        (
            "restock:SKU-1:1",
            "restock",
            ["refund:None", "record_refund:2000:cancel", "restock:SKU-1:1"],
        ),
    ],
    ids=["at-refund", "at-restock"],
)
async def test_a_temporal_cancel_with_a_cancels_step_outcome_finishes_the_cancel(
    env: WorkflowEnvironment, others: Client, call: str, step: str, before_the_rest: list[str]
) -> None:
    # Before: the run ended cancelled with the refund made but unrecorded, or the
    # order CANCELLED with its second line never restocked.
    request = two_line_order()
    handle = await step_ended_then_cancelled(
        env, others, lambda: start_refund(others, request), call
    )
    assert world.calls[: len(before_the_rest)] == before_the_rest
    refunded_and_restocked(request)
    await completed_with_the_cancelled_order(handle)
    await keep_history(others, handle.id, f"refund-cancel-temporal-cancel-with-{step}-outcome")
