"""Payments, read-only, for admins: one payment, and the ledger's balance check.

Both are direct gRPC reads of payments. Payments are written only by the order
saga's activities, never from the edge.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agora import scopes
from contracts.agora.common.v1 import Money
from contracts.agora.payments.v1 import GetPaymentRequest, LedgerBalanceRequest, Payment
from gateway.deps import deps
from gateway.problems import Problem
from gateway.routing import Route

ADMIN = frozenset({scopes.ADMIN})


class MoneyBody(BaseModel):
    model_config = ConfigDict(frozen=True)

    amount_minor: int = Field(description="Integer minor units (cents)")
    currency: str


class PaymentResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    payment_id: str
    order_id: str
    customer_id: str
    status: str = Field(description="authorized, partially_captured, captured, voided, ...")
    authorized: MoneyBody
    captured: MoneyBody
    refunded: MoneyBody
    released: MoneyBody
    card_brand: str
    card_last4: str = Field(description="The only card digits ever stored")
    psp_reference: str
    decline_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class LedgerBalanceQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account: (
        Annotated[
            str,
            StringConstraints(
                pattern=r"^(customer_funds|authorized_holds|merchant_revenue|refunds)$"
            ),
        ]
        | None
    ) = None
    payment_id: uuid.UUID | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None


class AccountBalanceBody(BaseModel):
    model_config = ConfigDict(frozen=True)

    account: str
    balance: MoneyBody


class LedgerBalanceResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    balanced: bool = Field(description="Every currency nets to zero and matches the intents")
    balances: list[AccountBalanceBody]
    net_by_currency: list[MoneyBody]
    entry_count: int
    intent_count: int
    problems: list[str]


def _money(value: Money | None) -> MoneyBody:
    return MoneyBody(
        amount_minor=value.amount_minor if value else 0, currency=value.currency if value else ""
    )


def payment_response(payment: Payment | None) -> PaymentResponse:
    if payment is None:
        raise Problem("upstream-error", "payments answered without the payment")
    reason = payment.decline_reason.name.lower() if payment.decline_reason else None
    return PaymentResponse(
        payment_id=payment.payment_id,
        order_id=payment.order_id,
        customer_id=payment.customer_id,
        status=payment.status.name.lower() if payment.status else "pending",
        authorized=_money(payment.authorized),
        captured=_money(payment.captured),
        refunded=_money(payment.refunded),
        released=_money(payment.released),
        card_brand=payment.card_brand,
        card_last4=payment.card_last4,
        psp_reference=payment.psp_reference,
        decline_reason=reason,
        created_at=payment.created_at,
        updated_at=payment.updated_at,
    )


async def get_payment(request: web.Request, _: None) -> PaymentResponse:
    try:
        payment_id = str(uuid.UUID(request.match_info["payment_id"]))
    except ValueError:
        raise Problem("invalid-argument", "payment_id must be a UUID") from None
    gw = deps(request)
    async with gw.upstream.call(request, "payments.GetPayment") as timeout:
        reply = await gw.upstream.payments.get_payment(
            GetPaymentRequest(payment_id=payment_id), timeout=timeout
        )
    return payment_response(reply.payment)


async def get_ledger_balance(
    request: web.Request, query: LedgerBalanceQuery
) -> LedgerBalanceResponse:
    gw = deps(request)
    call = LedgerBalanceRequest(
        account=query.account or "",
        payment_id=str(query.payment_id) if query.payment_id else "",
        currency=query.currency or "",
    )
    async with gw.upstream.call(request, "payments.LedgerBalance") as timeout:
        reply = await gw.upstream.payments.ledger_balance(call, timeout=timeout)
    return LedgerBalanceResponse(
        balanced=reply.balanced,
        balances=[
            AccountBalanceBody(account=b.account, balance=_money(b.balance)) for b in reply.balances
        ],
        net_by_currency=[_money(m) for m in reply.net_by_currency],
        entry_count=reply.entry_count,
        intent_count=reply.intent_count,
        problems=list(reply.problems),
    )


ROUTES = [
    Route(
        "GET",
        "/v1/admin/payments/{payment_id}",
        get_payment,
        "One payment intent: amounts, status, card brand and last four digits",
        "admin",
        auth=True,
        scopes=ADMIN,
        route_class="read",
        response=PaymentResponse,
        problems=("invalid-argument", "not-found"),
    ),
    Route(
        "GET",
        "/v1/admin/ledger/balance",
        get_ledger_balance,
        "The payments ledger's balances and its check (zero net, consistent with the intents)",
        "admin",
        auth=True,
        scopes=ADMIN,
        route_class="read",
        query=LedgerBalanceQuery,
        response=LedgerBalanceResponse,
        problems=("invalid-argument",),
    ),
]
