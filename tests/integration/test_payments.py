"""Payments against the real stack: its process, Postgres, Redis (the simulated PSP) and Temporal.

Activities are run as the order saga runs them: a workflow on the test's own
task queue calls `payments.*` on `agora-payments`, where the payments process
executes them. Test cards are tokenized here, at the PSP boundary, as a
client-side PSP library would; the service only ever sees tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType
from temporalio.worker import Worker

from agora import temporal as platform_temporal
from agora.config import Settings
from agora.db import create_pool, lock_for_transaction
from agora.grpc import Channels
from contracts.agora.payments.v1 import (
    GetPaymentRequest,
    LedgerBalanceRequest,
    PaymentsServiceStub,
    PaymentStatus,
)
from tests.integration.conftest import ServiceProcess, Services
from tests.integration.consumerkit import outbox_events
from tests.integration.payments_workflow import PaymentStep, PaymentStepWorkflow
from tests.integration.waiting import eventually
from workers.payments import ledger
from workers.payments.errors import IdempotencyKeyConflict, PaymentStateConflict
from workers.payments.intents import PaymentIntents
from workers.payments.psp_sim import RedisSimStore, SimulatedPsp, tokenize
from workflows.payments import (
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

pytestmark = pytest.mark.integration

SUCCESS = "4242424242424242"
INSUFFICIENT_FUNDS = "4000000000009995"
EXPIRED = "4000000000000069"
REQUIRES_ACTION = "4000000000003220"
SLOW = "4000000000000077"
FLAKY = "4000000000000119"
ALL_CARDS = (SUCCESS, INSUFFICIENT_FUNDS, EXPIRED, REQUIRES_ACTION, SLOW, FLAKY)
# The slow card's delay in this test session; the step timeout below is shorter.
SLOW_DELAY_S = "6"


# Fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def payments_service(services: Services) -> ServiceProcess:
    # Read by the payments process at start (a session may have started it already
    # with the 15 s default, which is just as much longer than the step timeout).
    os.environ.setdefault("AGORA_PAYMENTS_PSP_SLOW_DELAY_S", SLOW_DELAY_S)
    return services("payments")


@pytest.fixture(scope="module")
async def temporal(settings: Settings) -> Client:
    # The platform's client: its payload codec is the one the payments worker uses.
    return await platform_temporal.connect(settings)


@pytest.fixture(scope="module")
async def steps(temporal: Client, payments_service: ServiceProcess) -> AsyncIterator[Steps]:
    task_queue = f"payments-test-{uuid.uuid4().hex[:8]}"
    async with Worker(temporal, task_queue=task_queue, workflows=[PaymentStepWorkflow]):
        yield Steps(temporal, task_queue)


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.db_dsn("payments"), min_size=1, max_size=3)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def payments(
    settings: Settings, payments_service: ServiceProcess
) -> AsyncIterator[PaymentsServiceStub]:
    channels = Channels(settings, caller="gateway")  # payments' one caller (agora.grpc.CALLERS)
    yield PaymentsServiceStub(channels.get("payments"))
    channels.close()


# Helpers --------------------------------------------------------------------


@dataclass
class Steps:
    """Runs one payments activity through Temporal, as the saga does."""

    client: Client
    task_queue: str

    async def run(self, step: PaymentStep) -> Any:
        return await self.client.execute_workflow(
            PaymentStepWorkflow.run,
            step,
            id=f"payments-test-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )

    async def authorize(self, data: AuthorizeInput, **opts: Any) -> AuthorizeResult:
        return AuthorizeResult(**await self.run(PaymentStep("payments.authorize", data, **opts)))

    async def capture(self, data: CaptureInput) -> CaptureResult:
        return CaptureResult(**await self.run(PaymentStep("payments.capture", capture=data)))

    async def void(self, data: VoidInput) -> VoidResult:
        return VoidResult(**await self.run(PaymentStep("payments.void", void=data)))

    async def refund(self, data: RefundInput) -> RefundResult:
        return RefundResult(**await self.run(PaymentStep("payments.refund", refund=data)))


def card(pan: str) -> str:
    return tokenize(pan, 12, 2030).token


def new_key() -> str:
    return f"test-{uuid.uuid4().hex}"


def authorization(pan: str = SUCCESS, amount: int = 1000, **kw: Any) -> AuthorizeInput:
    return AuthorizeInput(
        idempotency_key=kw.pop("key", new_key()),
        order_id=kw.pop("order_id", f"order-{uuid.uuid4().hex[:10]}"),
        amount_minor=amount,
        currency="EUR",
        card_token=kw.pop("token", None) or card(pan),
        customer_id="customer-1",
    )


async def failure_of(call: Any) -> ActivityError:
    """The activity failure under the workflow failure a step raised."""
    with pytest.raises(WorkflowFailureError) as caught:
        await call
    cause = caught.value.cause
    assert isinstance(cause, ActivityError), cause
    return cause


async def application_failure(call: Any) -> ApplicationError:
    cause = (await failure_of(call)).cause
    assert isinstance(cause, ApplicationError), cause
    return cause


async def ledger_rows(db: asyncpg.Pool, payment_id: str) -> list[tuple[str, str, int]]:
    rows = await db.fetch(
        "SELECT kind, account, amount_minor FROM ledger_entries WHERE payment_id = $1"
        " ORDER BY entry_id",
        uuid.UUID(payment_id),
    )
    return [(r["kind"], r["account"], r["amount_minor"]) for r in rows]


async def events_of(db: asyncpg.Pool, payment_id: str) -> list[str]:
    return await outbox_events(db, "payment", payment_id)


async def assert_balanced(payments: PaymentsServiceStub, payment_id: str = "") -> None:
    report = await payments.ledger_balance(LedgerBalanceRequest(payment_id=payment_id))
    assert report.problems == []
    assert report.balanced
    assert all(net.amount_minor == 0 for net in report.net_by_currency)


# Authorize ------------------------------------------------------------------


async def test_authorize_holds_the_amount_and_records_the_ledger_and_event(
    steps: Steps, db: asyncpg.Pool, payments: PaymentsServiceStub
) -> None:
    data = authorization(amount=2500)
    result = await steps.authorize(data)
    assert result.payment_id == payment_id_for(data.idempotency_key)
    assert (result.status, result.amount_minor, result.currency) == ("authorized", 2500, "EUR")
    assert (result.card_brand, result.card_last4) == ("visa", "4242")
    assert await ledger_rows(db, result.payment_id) == [
        ("authorize", "authorized_holds", 2500),
        ("authorize", "customer_funds", -2500),
    ]
    assert await events_of(db, result.payment_id) == ["PaymentAuthorized"]
    reply = await payments.get_payment(GetPaymentRequest(order_id=data.order_id))
    assert reply.payment is not None
    assert reply.payment.payment_id == result.payment_id
    assert reply.payment.status == PaymentStatus.AUTHORIZED
    assert reply.payment.authorized is not None
    assert reply.payment.authorized.amount_minor == 2500
    await assert_balanced(payments, result.payment_id)


async def test_a_retried_authorize_returns_the_first_result_and_holds_once(
    steps: Steps, db: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    data = authorization()
    results = await asyncio.gather(*(steps.authorize(data) for _ in range(4)))
    again = await steps.authorize(data)
    assert all(r == results[0] for r in [*results, again])
    payment_id = results[0].payment_id
    assert (
        await db.fetchval(
            "SELECT count(*) FROM payment_operations WHERE idempotency_key = $1",
            data.idempotency_key,
        )
        == 1
    )
    assert len(await ledger_rows(db, payment_id)) == 2  # one movement
    assert await events_of(db, payment_id) == ["PaymentAuthorized"]
    assert await redis.exists(f"payments:psp:auth:{payment_id}") == 1
    # The PSP's authorization outlives any refund window (only idempotency keys expire).
    assert await redis.ttl(f"payments:psp:auth:{payment_id}") == -1


async def test_the_same_key_with_other_parameters_is_a_conflict(steps: Steps) -> None:
    data = authorization(amount=1000)
    await steps.authorize(data)
    changed = AuthorizeInput(**{**data.__dict__, "amount_minor": 1001})
    failure = await application_failure(steps.authorize(changed))
    assert failure.type == "IdempotencyKeyConflict"
    assert failure.non_retryable


async def test_a_key_used_for_another_operation_is_a_conflict(steps: Steps) -> None:
    data = authorization()
    auth = await steps.authorize(data)
    failure = await application_failure(
        steps.void(VoidInput(data.idempotency_key, auth.payment_id))
    )
    assert (failure.type, failure.non_retryable) == ("IdempotencyKeyConflict", True)


@pytest.mark.parametrize(
    ("pan", "reason"),
    [(INSUFFICIENT_FUNDS, "insufficient_funds"), (EXPIRED, "card_expired")],
)
async def test_a_declined_card_fails_non_retryably_with_its_reason_and_the_same_on_retry(
    steps: Steps, db: asyncpg.Pool, payments: PaymentsServiceStub, pan: str, reason: str
) -> None:
    data = authorization(pan)
    failure = await application_failure(steps.authorize(data))
    assert (failure.type, failure.non_retryable, list(failure.details)) == (
        "PaymentDeclined",
        True,
        [reason],
    )
    retried = await application_failure(steps.authorize(data))
    assert (retried.type, list(retried.details)) == ("PaymentDeclined", [reason])
    payment_id = payment_id_for(data.idempotency_key)
    reply = await payments.get_payment(GetPaymentRequest(payment_id=payment_id))
    assert reply.payment is not None and reply.payment.status == PaymentStatus.DECLINED
    assert await ledger_rows(db, payment_id) == []
    assert await events_of(db, payment_id) == ["PaymentDeclined"]


async def test_a_requires_action_card_fails_non_retryably(
    steps: Steps, payments: PaymentsServiceStub
) -> None:
    data = authorization(REQUIRES_ACTION)
    failure = await application_failure(steps.authorize(data))
    assert failure.type == "PaymentRequiresAction"
    assert failure.non_retryable
    assert next(iter(failure.details)) == "requires_action"
    reply = await payments.get_payment(
        GetPaymentRequest(payment_id=payment_id_for(data.idempotency_key))
    )
    assert reply.payment is not None and reply.payment.status == PaymentStatus.REQUIRES_ACTION


async def test_a_flaky_psp_is_retried_until_it_authorizes_once(
    steps: Steps, db: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    data = authorization(FLAKY)
    result = await steps.authorize(data)
    assert result.status == "authorized"
    # Two transient failures (the service's default), then the success: three calls.
    assert int(await redis.get(f"payments:psp:flaky:{result.payment_id}") or 0) == 3
    assert len(await ledger_rows(db, result.payment_id)) == 2
    capture = await steps.capture(CaptureInput(new_key(), result.payment_id))
    assert capture.total_captured_minor == 1000


async def test_a_flaky_psp_without_retries_fails_retryably(steps: Steps) -> None:
    data = authorization(FLAKY)
    failure = await application_failure(
        steps.run(PaymentStep("payments.authorize", data, max_attempts=1))
    )
    assert failure.type == "PspUnavailable"
    assert not failure.non_retryable


async def test_a_slow_psp_times_out_and_a_void_releases_the_late_authorization(
    steps: Steps, db: asyncpg.Pool, redis: aioredis.Redis, payments: PaymentsServiceStub
) -> None:
    data = authorization(SLOW)
    payment_id = payment_id_for(data.idempotency_key)
    failure = await failure_of(
        steps.run(PaymentStep("payments.authorize", data, timeout_s=2, max_attempts=1))
    )
    assert isinstance(failure.cause, TimeoutError)
    assert failure.cause.type == TimeoutType.START_TO_CLOSE
    # The PSP did authorize; only its answer was late. The compensation voids it.
    voided = await steps.void(VoidInput(new_key(), payment_id))
    assert (voided.status, voided.released_minor) == ("voided", 0)
    psp_state = await redis.get(f"payments:psp:auth:{payment_id}")
    assert psp_state is not None and b'"voided": true' in psp_state
    # The late answer cannot authorize it again, on the same key or after a retry.
    failure2 = await application_failure(steps.authorize(data, timeout_s=30))
    assert failure2.type == "PaymentStateConflict"
    assert await ledger_rows(db, payment_id) == []
    await assert_balanced(payments, payment_id)


async def test_slow_authorizations_hold_no_connection_so_voids_and_captures_go_ahead(
    settings: Settings, redis: aioredis.Redis, payments_service: ServiceProcess
) -> None:
    # Payments' own code in-process on a pool of 3, with as many slow authorizations
    # at the PSP: were each holding its connection there, the compensating void (and
    # another order's capture) would wait for one until the PSP answered.
    pool = await create_pool(settings, "payments", size=3)
    intents = PaymentIntents(pool, SimulatedPsp(RedisSimStore(redis), slow_delay_s=15))
    slow_tasks: list[asyncio.Task[AuthorizeResult]] = []
    meanwhile: asyncio.Task[tuple[CaptureResult, VoidResult]] | None = None
    try:
        other = await intents.authorize(authorization(amount=800))
        slow = [authorization(SLOW) for _ in range(3)]
        slow_tasks = [asyncio.create_task(intents.authorize(data)) for data in slow]
        slow_ids = [payment_id_for(data.idempotency_key) for data in slow]
        # Wait until all three are at the PSP (it has their authorizations; the answers wait).
        while await redis.exists(*(f"payments:psp:auth:{p}" for p in slow_ids)) < len(slow_ids):
            assert not any(t.done() for t in slow_tasks), [t.result() for t in slow_tasks]
            await asyncio.sleep(0.05)

        async def others() -> tuple[CaptureResult, VoidResult]:
            return await asyncio.gather(
                intents.capture(CaptureInput(new_key(), other.payment_id)),
                intents.void(VoidInput(new_key(), slow_ids[0])),
            )

        meanwhile = asyncio.create_task(others())
        done, _ = await asyncio.wait({meanwhile, *slow_tasks}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {meanwhile}, "the void and the capture waited for the slow authorizations"
        captured, voided = meanwhile.result()
        assert (captured.status, captured.amount_minor) == ("captured", 800)
        assert (voided.status, voided.released_minor) == ("voided", 0)
        # The late answers: the voided one is refused, the others are recorded.
        outcomes = await asyncio.gather(*slow_tasks, return_exceptions=True)
        assert isinstance(outcomes[0], PaymentStateConflict), outcomes[0]
        assert [getattr(o, "status", o) for o in outcomes[1:]] == ["authorized", "authorized"]
    finally:
        started = [*slow_tasks, *([meanwhile] if meanwhile else [])]
        for task in started:
            task.cancel()
        await asyncio.gather(*started, return_exceptions=True)
        await pool.close()


# Void -----------------------------------------------------------------------


async def test_void_releases_the_hold_and_then_nothing_can_be_captured(
    steps: Steps, db: asyncpg.Pool
) -> None:
    auth = await steps.authorize(authorization(amount=700))
    key = new_key()
    voided = await steps.void(VoidInput(key, auth.payment_id))
    assert (voided.released_minor, voided.status) == (700, "voided")
    assert await steps.void(VoidInput(key, auth.payment_id)) == voided
    # Another void (another key) finds nothing more to release.
    assert (await steps.void(VoidInput(new_key(), auth.payment_id))).released_minor == 0
    failure = await application_failure(steps.capture(CaptureInput(new_key(), auth.payment_id)))
    assert failure.type == "PaymentStateConflict"
    assert await events_of(db, auth.payment_id) == ["PaymentAuthorized", "PaymentVoided"]


async def test_a_void_before_authorize_succeeds_and_refuses_the_late_authorization(
    steps: Steps, db: asyncpg.Pool
) -> None:
    # The saga registers its compensation before the effect: it may run first.
    data = authorization()
    payment_id = payment_id_for(data.idempotency_key)
    voided = await steps.void(VoidInput(new_key(), payment_id))
    assert (voided.released_minor, voided.status) == (0, "voided")
    failure = await application_failure(steps.authorize(data))
    assert failure.type == "PaymentStateConflict"
    assert await ledger_rows(db, payment_id) == []


async def test_voiding_a_declined_payment_is_a_harmless_no_op(steps: Steps) -> None:
    data = authorization(INSUFFICIENT_FUNDS)
    await application_failure(steps.authorize(data))
    voided = await steps.void(VoidInput(new_key(), payment_id_for(data.idempotency_key)))
    assert (voided.released_minor, voided.status) == (0, "declined")


# Capture --------------------------------------------------------------------


async def test_partial_captures_add_up_to_the_authorized_amount_and_no_further(
    steps: Steps, db: asyncpg.Pool, payments: PaymentsServiceStub
) -> None:
    auth = await steps.authorize(authorization(amount=1000))
    first_key = new_key()
    first = await steps.capture(CaptureInput(first_key, auth.payment_id, 300))
    assert (first.total_captured_minor, first.remaining_authorized_minor) == (300, 700)
    assert first.status == "partially_captured"
    # A retried capture returns its first result and captures nothing more.
    assert await steps.capture(CaptureInput(first_key, auth.payment_id, 300)) == first
    over = await application_failure(steps.capture(CaptureInput(new_key(), auth.payment_id, 701)))
    assert (over.type, over.non_retryable) == ("PaymentAmountExceeded", True)
    second = await steps.capture(CaptureInput(new_key(), auth.payment_id, 200))
    rest = await steps.capture(CaptureInput(new_key(), auth.payment_id))  # everything left
    assert (second.total_captured_minor, rest.amount_minor, rest.total_captured_minor) == (
        500,
        500,
        1000,
    )
    assert rest.status == "captured"
    done = await application_failure(steps.capture(CaptureInput(new_key(), auth.payment_id, 1)))
    assert done.type == "PaymentStateConflict"
    assert [k for k, a, n in await ledger_rows(db, auth.payment_id) if a == "merchant_revenue"] == [
        "capture"
    ] * 3
    await assert_balanced(payments, auth.payment_id)


async def test_concurrent_retries_of_one_capture_capture_once(
    steps: Steps, db: asyncpg.Pool
) -> None:
    auth = await steps.authorize(authorization(amount=1000))
    capture = CaptureInput(new_key(), auth.payment_id, 400)
    results = await asyncio.gather(*(steps.capture(capture) for _ in range(4)))
    assert len({r.capture_id for r in results}) == 1
    assert (
        await db.fetchval(
            "SELECT captured_minor FROM payment_intents WHERE payment_id = $1",
            uuid.UUID(auth.payment_id),
        )
        == 400
    )


async def test_one_capture_key_sent_for_two_payments_at_once_captures_one_of_them(
    steps: Steps, db: asyncpg.Pool
) -> None:
    # One attempt each: the second call must be refused as a conflict at once, not
    # fail on the idempotency record's insert after its own PSP call.
    for _ in range(3):
        first, second = [await steps.authorize(authorization(amount=700)) for _ in range(2)]
        key = new_key()
        outcomes = await asyncio.gather(
            *(
                steps.run(
                    PaymentStep(
                        "payments.capture",
                        capture=CaptureInput(key, auth.payment_id, 300),
                        max_attempts=1,
                    )
                )
                for auth in (first, second)
            ),
            return_exceptions=True,
        )
        captured = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(captured) == 1 and len(refused) == 1, outcomes
        failure = refused[0]
        assert isinstance(failure, WorkflowFailureError)
        assert isinstance(failure.cause, ActivityError)
        assert isinstance(failure.cause.cause, ApplicationError)
        assert failure.cause.cause.type == "IdempotencyKeyConflict"
        totals = await db.fetch(
            "SELECT captured_minor FROM payment_intents WHERE payment_id = ANY($1::uuid[])",
            [uuid.UUID(first.payment_id), uuid.UUID(second.payment_id)],
        )
        assert sorted(r["captured_minor"] for r in totals) == [0, 300]


class GatedCaptures(SimulatedPsp):
    """Captures wait at the PSP's door until `open` is set."""

    def __init__(self, store: RedisSimStore):
        super().__init__(store)
        self.waiting = asyncio.Event()
        self.open = asyncio.Event()

    async def capture(self, **kw: Any) -> Any:
        self.waiting.set()
        await self.open.wait()
        return await super().capture(**kw)


async def test_one_key_sent_for_an_authorize_and_a_capture_at_once_moves_money_once(
    settings: Settings, redis: aioredis.Redis, payments_service: ServiceProcess
) -> None:
    # A caller's bug: one key for two operations. The authorize took no lock on its key,
    # so a capture at the PSP under the same key went ahead, captured, and failed only
    # at its record's insert: money moved at the PSP and never booked.
    pool = await create_pool(settings, "payments", size=4)
    psp = GatedCaptures(RedisSimStore(redis))
    intents = PaymentIntents(pool, psp)
    try:
        other = await intents.authorize(authorization(amount=700))
        key = new_key()
        capturing = asyncio.create_task(intents.capture(CaptureInput(key, other.payment_id, 300)))
        await psp.waiting.wait()  # inside its transaction, at the PSP
        authorizing = asyncio.create_task(intents.authorize(authorization(amount=500, key=key)))
        await asyncio.sleep(0.3)  # the authorize reaches the key's lock (or would finish)
        psp.open.set()
        captured, refused = await asyncio.gather(capturing, authorizing, return_exceptions=True)
        assert not isinstance(captured, BaseException), captured
        assert captured.total_captured_minor == 300
        assert isinstance(refused, IdempotencyKeyConflict), refused
        unauthorized = payment_id_for(key)
        assert not await redis.exists(f"payments:psp:auth:{unauthorized}")
    finally:
        await pool.close()


def _queued_on_advisory_locks(db: asyncpg.Pool, count: int) -> Any:
    async def probe() -> bool:
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return waiting == count

    return probe


async def test_one_key_sent_for_an_authorize_and_its_void_at_once_does_not_deadlock(
    settings: Settings, db: asyncpg.Pool, redis: aioredis.Redis, payments_service: ServiceProcess
) -> None:
    # A caller's bug: the void of a payment sent under the key of its own authorize.
    # The authorize took its intent's row (its INSERT) before the key's lock, and the
    # void the key before the row (its INSERT of a payment it had not seen): each
    # waited for the other until PostgreSQL aborted one with a deadlock.
    pool = await create_pool(settings, "payments", size=4)
    intents = PaymentIntents(pool, SimulatedPsp(RedisSimStore(redis)))
    key = new_key()
    payment_id = payment_id_for(key)
    try:
        async with db.acquire() as conn, conn.transaction():
            # Hold the key so both queue on it: the void first, then the authorize.
            await lock_for_transaction(conn, f"payments:{key}")
            voiding = asyncio.create_task(intents.void(VoidInput(key, payment_id)))
            await eventually(_queued_on_advisory_locks(db, 1), what="the void queued on the key")
            authorizing = asyncio.create_task(intents.authorize(authorization(key=key)))
            await eventually(_queued_on_advisory_locks(db, 2), what="the authorize queued too")
        voided, refused = await asyncio.wait_for(
            asyncio.gather(voiding, authorizing, return_exceptions=True), timeout=30
        )
        assert not isinstance(voided, BaseException), voided
        assert (voided.status, voided.released_minor) == ("voided", 0)
        assert isinstance(refused, IdempotencyKeyConflict), refused
        # Nothing is held at the PSP: the void cancelled the authorization in advance.
        held = json.loads(await redis.get(f"payments:psp:auth:{payment_id}"))
        assert held["state"] == "cancelled", held
    finally:
        await pool.close()


async def test_a_capture_the_psp_made_unrecorded_is_booked_only_as_it_was_asked(
    steps: Steps, db: asyncpg.Pool, redis: aioredis.Redis, payments: PaymentsServiceStub
) -> None:
    # The PSP captured 500 under the key, and payments crashed before recording it.
    first, second = [await steps.authorize(authorization(amount=1000)) for _ in range(2)]
    key = new_key()
    psp = SimulatedPsp(RedisSimStore(redis))
    await psp.capture(
        key=f"capture:{key}", authorization_key=first.payment_id, amount_minor=500, currency="EUR"
    )
    # The same key for another amount or another payment must not book the PSP's
    # answer to the first call (80 booked against 50 captured, or a capture of the
    # second payment that never happened).
    for other in (
        CaptureInput(key, first.payment_id, 800),
        CaptureInput(key, second.payment_id, 500),
    ):
        refused = await application_failure(
            steps.run(PaymentStep("payments.capture", capture=other, max_attempts=1))
        )
        assert refused.type == "IdempotencyKeyConflict", refused
    captured = "SELECT captured_minor FROM payment_intents WHERE payment_id = $1"
    assert await db.fetchval(captured, uuid.UUID(first.payment_id)) == 0
    assert await db.fetchval(captured, uuid.UUID(second.payment_id)) == 0
    # The retry the crash left owing, with the request the PSP saw, books it once.
    done = await steps.capture(CaptureInput(key, first.payment_id, 500))
    assert done.total_captured_minor == 500
    assert await db.fetchval(captured, uuid.UUID(first.payment_id)) == 500
    await assert_balanced(payments, first.payment_id)


@pytest.mark.parametrize("unrecorded", [1000, 400], ids=["whole", "part"])
async def test_a_void_after_a_capture_the_psp_made_unrecorded_books_only_what_it_released(
    steps: Steps,
    db: asyncpg.Pool,
    redis: aioredis.Redis,
    payments: PaymentsServiceStub,
    unrecorded: int,
) -> None:
    # The PSP captured under the key, payments' transaction was lost, and a void came
    # before the capture's retry. Before, the void booked all 1000 as released (the
    # customer charged, payments saying voided) and the retry was refused.
    first = await steps.authorize(authorization(amount=1000))
    key = new_key()
    psp = SimulatedPsp(RedisSimStore(redis))
    await psp.capture(
        key=f"capture:{key}",
        authorization_key=first.payment_id,
        amount_minor=unrecorded,
        currency="EUR",
    )
    voided = await steps.void(VoidInput(new_key(), first.payment_id))
    assert voided.released_minor == 1000 - unrecorded
    # The retry the lost transaction left owing books the capture.
    done = await steps.capture(CaptureInput(key, first.payment_id, unrecorded))
    assert (done.total_captured_minor, done.status) == (unrecorded, "captured")
    row = await db.fetchrow(
        "SELECT captured_minor, released_minor FROM payment_intents WHERE payment_id = $1",
        uuid.UUID(first.payment_id),
    )
    assert (row["captured_minor"], row["released_minor"]) == (unrecorded, 1000 - unrecorded)
    await assert_balanced(payments, first.payment_id)


async def test_a_void_meeting_the_authorizations_first_transaction_voids_its_intent(
    steps: Steps, db: asyncpg.Pool
) -> None:
    # The saga voids an authorization whose answer it never had while that
    # authorization's first transaction (its pending intent) has not committed: the
    # void's own INSERT waited for it, then failed UniqueViolationError, a fault.
    payment_id = uuid.uuid4()
    async with db.acquire() as conn:
        first = conn.transaction()
        await first.start()
        await conn.execute(
            "INSERT INTO payment_intents (payment_id, order_id, customer_id, currency, status,"
            " requested_minor, card_token, card_brand, card_last4)"
            " VALUES ($1, $2, '', 'EUR', 'pending', 1000, $3, 'visa', '4242')",
            payment_id,
            str(uuid.uuid4()),
            card(SUCCESS),
        )
        void = asyncio.create_task(
            steps.run(
                PaymentStep(
                    "payments.void", void=VoidInput(new_key(), str(payment_id)), max_attempts=1
                )
            )
        )

        async def waiting_for_the_row() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'INSERT INTO payment_intents%'"
                )
            )

        await eventually(waiting_for_the_row, within=30, what="the void to wait for the row")
        await first.commit()
    voided = VoidResult(**await void)
    assert (voided.released_minor, voided.status) == (0, "voided")
    status = "SELECT status FROM payment_intents WHERE payment_id = $1"
    assert await db.fetchval(status, payment_id) == "voided"


async def test_a_void_the_psp_made_unrecorded_is_not_taken_for_another_payment(
    steps: Steps, db: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    # The PSP voided one payment under the key, and payments crashed before recording
    # it; the key then comes for a payment not yet authorized (the saga voids an
    # authorization whose answer it never had). Refused for good, not retried forever.
    first = await steps.authorize(authorization(amount=1000))
    key = new_key()
    psp = SimulatedPsp(RedisSimStore(redis))
    await psp.void(key=f"void:{key}", authorization_key=first.payment_id)
    unknown = str(uuid.uuid4())
    refused = await application_failure(
        steps.run(PaymentStep("payments.void", void=VoidInput(key, unknown), max_attempts=1))
    )
    assert refused.type == "IdempotencyKeyConflict", refused
    assert refused.non_retryable
    status = "SELECT status FROM payment_intents WHERE payment_id = $1"
    assert await db.fetchval(status, uuid.UUID(unknown)) is None  # rolled back


async def test_a_partial_capture_then_void_releases_only_the_rest(steps: Steps) -> None:
    auth = await steps.authorize(authorization(amount=1000))
    await steps.capture(CaptureInput(new_key(), auth.payment_id, 600))
    voided = await steps.void(VoidInput(new_key(), auth.payment_id))
    assert (voided.released_minor, voided.status) == (400, "captured")


async def test_a_void_after_capture_conflicts_until_the_capture_is_refunded(
    steps: Steps, payments: PaymentsServiceStub
) -> None:
    # A saga cancelled after its capture compensates in reverse: refund, then void.
    auth = await steps.authorize(authorization(amount=900))
    await steps.capture(CaptureInput(new_key(), auth.payment_id))
    captured = await application_failure(steps.void(VoidInput(new_key(), auth.payment_id)))
    assert captured.type == "PaymentStateConflict"
    await steps.refund(RefundInput(new_key(), auth.payment_id, 400))
    partly = await application_failure(steps.void(VoidInput(new_key(), auth.payment_id)))
    assert partly.type == "PaymentStateConflict"
    await steps.refund(RefundInput(new_key(), auth.payment_id))
    voided = await steps.void(VoidInput(new_key(), auth.payment_id))
    assert (voided.released_minor, voided.status) == (0, "refunded")
    await assert_balanced(payments, auth.payment_id)


# Refund ---------------------------------------------------------------------


async def test_refunds_are_limited_to_what_was_captured(
    steps: Steps, db: asyncpg.Pool, payments: PaymentsServiceStub
) -> None:
    auth = await steps.authorize(authorization(amount=1000))
    nothing = await application_failure(steps.refund(RefundInput(new_key(), auth.payment_id, 1)))
    assert nothing.type == "PaymentStateConflict"
    await steps.capture(CaptureInput(new_key(), auth.payment_id, 800))
    key = new_key()
    first = await steps.refund(RefundInput(key, auth.payment_id, 300))
    assert (first.amount_minor, first.total_refunded_minor) == (300, 300)
    assert await steps.refund(RefundInput(key, auth.payment_id, 300)) == first
    over = await application_failure(steps.refund(RefundInput(new_key(), auth.payment_id, 501)))
    assert (over.type, over.non_retryable) == ("PaymentAmountExceeded", True)
    rest = await steps.refund(RefundInput(new_key(), auth.payment_id))
    assert (rest.amount_minor, rest.total_refunded_minor) == (500, 800)
    assert rest.status == "partially_refunded"  # 200 still held
    voided = await steps.void(VoidInput(new_key(), auth.payment_id))
    assert (voided.released_minor, voided.status) == (200, "refunded")
    assert await events_of(db, auth.payment_id) == [
        "PaymentAuthorized",
        "PaymentCaptured",
        "PaymentRefunded",
        "PaymentRefunded",
        "PaymentVoided",
    ]
    await assert_balanced(payments, auth.payment_id)


# The ledger -----------------------------------------------------------------


async def test_the_ledger_sums_to_zero_and_matches_the_intents_after_a_mixed_run(
    steps: Steps, payments: PaymentsServiceStub
) -> None:
    async def lifecycle(i: int) -> None:
        auth = await steps.authorize(authorization(amount=1000 + i))
        if i % 3 == 0:
            await steps.void(VoidInput(new_key(), auth.payment_id))
            return
        await steps.capture(CaptureInput(new_key(), auth.payment_id, 500))
        if i % 3 == 1:
            await steps.refund(RefundInput(new_key(), auth.payment_id, 200 + i))

    await asyncio.gather(*(lifecycle(i) for i in range(9)))
    await asyncio.gather(
        *(application_failure(steps.authorize(authorization(INSUFFICIENT_FUNDS))) for _ in range(2))
    )
    report = await payments.ledger_balance(LedgerBalanceRequest(currency="EUR"))
    assert report.problems == []
    assert report.balanced
    assert report.net is not None and report.net.amount_minor == 0
    assert report.intent_count >= 11
    accounts = {b.account for b in report.balances}
    assert accounts == {"customer_funds", "authorized_holds", "merchant_revenue", "refunds"}
    revenue = await payments.ledger_balance(LedgerBalanceRequest(account="merchant_revenue"))
    assert [b.account for b in revenue.balances] == ["merchant_revenue"]


async def test_a_currencys_check_sees_an_intent_of_another_currency_with_entries_in_it(
    db: asyncpg.Pool,
) -> None:
    # Under a currency filter only the filter's intents were compared: a USD intent
    # with balanced EUR entries passed the EUR check.
    payment_id = uuid.uuid4()
    async with db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(
                "INSERT INTO payment_intents (payment_id, order_id, currency, status)"
                " VALUES ($1, 'o-foreign', 'USD', 'authorized')",
                payment_id,
            )
            movement = uuid.uuid4()
            await conn.executemany(
                "INSERT INTO ledger_entries"
                " (movement_id, payment_id, kind, account, amount_minor, currency)"
                " VALUES ($1, $2, 'authorize', $3, $4, 'EUR')",
                [
                    (movement, payment_id, "customer_funds", -500),
                    (movement, payment_id, "authorized_holds", 500),
                ],
            )
            report = await ledger.check(conn, currency="EUR")
        finally:
            await transaction.rollback()  # planted for the check only: never committed
    assert not report.balanced
    assert any(str(payment_id) in problem for problem in report.problems), report.problems


async def test_the_database_refuses_an_unbalanced_movement_and_any_edit(
    steps: Steps, db: asyncpg.Pool
) -> None:
    auth = await steps.authorize(authorization())
    payment_id = uuid.UUID(auth.payment_id)
    with pytest.raises(asyncpg.CheckViolationError):
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO ledger_entries"
                " (movement_id, payment_id, kind, account, amount_minor, currency)"
                " VALUES ($1, $2, 'capture', 'merchant_revenue', 1, 'EUR')",
                uuid.uuid4(),
                payment_id,
            )
    with pytest.raises(asyncpg.RaiseError):
        await db.execute(
            "UPDATE ledger_entries SET amount_minor = 1 WHERE payment_id = $1", payment_id
        )


# Text PostgreSQL cannot hold -------------------------------------------------


async def test_text_postgresql_cannot_hold_is_an_invalid_argument_on_the_read_api(
    payments: PaymentsServiceStub,
) -> None:
    # A NUL would fail the query: UNKNOWN, as if payments were broken.
    calls = [
        payments.get_payment(GetPaymentRequest(order_id="order-\x00")),
        payments.get_payment(GetPaymentRequest(order_id="o" * 201)),
        payments.ledger_balance(LedgerBalanceRequest(currency="\x00")),
        payments.ledger_balance(LedgerBalanceRequest(currency="eur")),
    ]
    for call in calls:
        with pytest.raises(GRPCError) as caught:
            await call
        assert caught.value.status == GrpcStatus.INVALID_ARGUMENT, caught.value


BAD_TEXT = {
    "authorize-order-nul": lambda: PaymentStep(
        "payments.authorize", authorization(order_id="order-\x00")
    ),
    "authorize-customer-nul": lambda: PaymentStep(
        "payments.authorize", dataclasses.replace(authorization(), customer_id="c-\x00")
    ),
    "authorize-key-nul": lambda: PaymentStep("payments.authorize", authorization(key="k-\x00")),
    "authorize-order-too-long": lambda: PaymentStep(
        "payments.authorize", authorization(order_id="o" * 201)
    ),
    "capture-key-nul": lambda: PaymentStep(
        "payments.capture", capture=CaptureInput("k-\x00", str(uuid.uuid4()))
    ),
    "void-key-nul": lambda: PaymentStep(
        "payments.void", void=VoidInput("k-\x00", str(uuid.uuid4()))
    ),
    "refund-key-nul": lambda: PaymentStep(
        "payments.refund", refund=RefundInput("k-\x00", str(uuid.uuid4()))
    ),
}


@pytest.mark.parametrize("step", BAD_TEXT.values(), ids=BAD_TEXT.keys())
async def test_text_postgresql_cannot_hold_fails_an_activity_at_once_and_for_good(
    steps: Steps, step: Any
) -> None:
    # Not a retryable database error: a capture or void without a time budget
    # would retry it for ever.
    failure = await application_failure(steps.run(step()))
    assert (failure.type, failure.non_retryable) == ("InvalidPaymentRequest", True)


# Card data ------------------------------------------------------------------


async def test_a_card_number_instead_of_a_token_is_refused_without_echoing_it(
    steps: Steps,
) -> None:
    failure = await application_failure(steps.authorize(authorization(token=SUCCESS)))
    assert (failure.type, failure.non_retryable) == ("InvalidPaymentRequest", True)
    assert SUCCESS not in str(failure)
    # Names the token, which the saga takes for the customer's decline.
    assert list(failure.details) == ["card_token"]


async def test_no_card_number_is_in_the_database_or_the_service_log(
    steps: Steps, db: asyncpg.Pool, payments_service: ServiceProcess
) -> None:
    # Run every test card through, tokenized as clients should and raw as a
    # careless client would (the only way a number reaches the service), so
    # each number had its chance to leak.
    for pan in (SUCCESS, INSUFFICIENT_FUNDS, EXPIRED, REQUIRES_ACTION, FLAKY):
        try:
            await steps.authorize(authorization(pan))
        except WorkflowFailureError:
            pass
    for pan in ALL_CARDS:
        refusal = await application_failure(steps.authorize(authorization(token=pan)))
        assert refusal.type == "InvalidPaymentRequest"
    dump = []
    for table in ("payment_intents", "payment_operations", "ledger_entries", "outbox"):
        rows = await db.fetch(f"SELECT t::text AS row FROM {table} t")  # bytea as hex
        dump += [r["row"] for r in rows]
    envelopes = await db.fetch("SELECT envelope FROM outbox")
    text = "\n".join(dump)
    raw = b"\n".join(bytes(r["envelope"]) for r in envelopes)
    log = payments_service.log.read_text(errors="replace")
    assert "4242" in text  # the last four are kept (so the search below can hit)
    for pan in ALL_CARDS:
        assert pan not in text
        assert pan.encode() not in raw
        assert pan not in log
