"""Payments refuses text PostgreSQL cannot take before it reaches the database.

A NUL (or a lone surrogate, which is no UTF-8) fails the statement with a
generic error: the read API would answer UNKNOWN and an activity would retry it,
a capture or void without a time budget for ever. They, and over-long ids, are
an InvalidPaymentRequest: INVALID_ARGUMENT, a non-retryable activity failure.
The pool here fails the test if anything reaches it.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from grpclib.const import Status as GrpcStatus
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.payments import PaymentsActivities
from agora.errors import InvalidArgument
from contracts.agora.payments.v1 import GetPaymentRequest, LedgerBalanceRequest
from workers.payments.api import PaymentsApi
from workers.payments.errors import InvalidPaymentRequest
from workers.payments.intents import PaymentIntents
from workers.payments.model import AuthorizeInput, CaptureInput, RefundInput, VoidInput
from workers.payments.psp_sim import MemorySimStore, SimulatedPsp, tokenize

# Text PostgreSQL refuses, and text longer than payments accepts.
UNSTORABLE = ["order-\x00", "\x00", "order-\ud800"]
TOO_LONG = "o" * 201


class NoDatabase:
    """A pool that invalid input must never reach."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"invalid input reached the database (pool.{name})")


@pytest.fixture
def intents() -> PaymentIntents:
    return PaymentIntents(NoDatabase(), SimulatedPsp(MemorySimStore()))  # type: ignore[arg-type]


def authorization(**changes: Any) -> AuthorizeInput:
    data = AuthorizeInput(
        idempotency_key=f"key-{uuid.uuid4().hex}",
        order_id="order-1",
        amount_minor=1000,
        currency="EUR",
        card_token=tokenize("4242424242424242", 12, 2030).token,
        customer_id="customer-1",
    )
    return dataclasses.replace(data, **changes)


@pytest.mark.parametrize("field", ["order_id", "customer_id", "idempotency_key"])
@pytest.mark.parametrize("value", [*UNSTORABLE, TOO_LONG])
async def test_authorize_refuses_unstorable_or_over_long_text(
    intents: PaymentIntents, field: str, value: str
) -> None:
    with pytest.raises(InvalidPaymentRequest) as caught:
        await intents.authorize(authorization(**{field: value}))
    assert field in caught.value.detail
    assert value not in caught.value.detail  # never echoed


@pytest.mark.parametrize("value", UNSTORABLE)
async def test_capture_void_and_refund_refuse_an_unstorable_key(
    intents: PaymentIntents, value: str
) -> None:
    payment_id = str(uuid.uuid4())
    for call in (
        intents.capture(CaptureInput(value, payment_id)),
        intents.void(VoidInput(value, payment_id)),
        intents.refund(RefundInput(value, payment_id)),
    ):
        with pytest.raises(InvalidPaymentRequest, match="idempotency_key"):
            await call


@pytest.mark.parametrize("value", UNSTORABLE)
async def test_the_activity_fails_non_retryably_so_a_void_is_not_retried_for_ever(
    intents: PaymentIntents, value: str
) -> None:
    activities = PaymentsActivities(intents)
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError) as caught:
        await env.run(activities.void, VoidInput(value, str(uuid.uuid4())))
    assert (caught.value.type, caught.value.non_retryable) == ("InvalidPaymentRequest", True)


@pytest.mark.parametrize("value", [*UNSTORABLE, TOO_LONG])
async def test_get_payment_by_an_unstorable_order_id_is_an_invalid_argument(value: str) -> None:
    api = PaymentsApi(NoDatabase())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as caught:
        await api.get_payment(GetPaymentRequest(order_id=value))
    assert caught.value.grpc_status == GrpcStatus.INVALID_ARGUMENT


@pytest.mark.parametrize("currency", ["\x00", "EU\x00", "eur", "EURO", "\ud800"])
async def test_ledger_balance_refuses_a_currency_that_is_no_currency_code(currency: str) -> None:
    api = PaymentsApi(NoDatabase())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as caught:
        await api.ledger_balance(LedgerBalanceRequest(currency=currency))
    assert caught.value.grpc_status == GrpcStatus.INVALID_ARGUMENT
