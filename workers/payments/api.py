"""Payments' gRPC read API: a payment by id or by order, and the ledger check."""

from __future__ import annotations

import uuid

import asyncpg
import betterproto2

from agora.errors import InvalidArgument
from contracts.agora.common.v1 import Money
from contracts.agora.payments.v1 import (
    AccountBalance,
    DeclineReason,
    GetPaymentRequest,
    GetPaymentResponse,
    LedgerBalanceRequest,
    LedgerBalanceResponse,
    Payment,
    PaymentsServiceBase,
    PaymentStatus,
)
from workers.payments import ledger
from workers.payments.errors import PaymentNotFound
from workers.payments.intents import checked_currency, checked_text
from workers.payments.model import Status

_STATUS = {
    Status.PENDING: PaymentStatus.UNSPECIFIED,
    Status.REQUIRES_ACTION: PaymentStatus.REQUIRES_ACTION,
    Status.DECLINED: PaymentStatus.DECLINED,
    Status.AUTHORIZED: PaymentStatus.AUTHORIZED,
    Status.PARTIALLY_CAPTURED: PaymentStatus.PARTIALLY_CAPTURED,
    Status.CAPTURED: PaymentStatus.CAPTURED,
    Status.VOIDED: PaymentStatus.VOIDED,
    Status.PARTIALLY_REFUNDED: PaymentStatus.PARTIALLY_REFUNDED,
    Status.REFUNDED: PaymentStatus.REFUNDED,
}
_DECLINE = {
    "": DeclineReason.UNSPECIFIED,
    "insufficient_funds": DeclineReason.INSUFFICIENT_FUNDS,
    "card_expired": DeclineReason.CARD_EXPIRED,
    "requires_action": DeclineReason.REQUIRES_ACTION,
}


def _uuid(value: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be a UUID") from None


def payment_message(row: asyncpg.Record) -> Payment:
    currency = row["currency"]

    def money(column: str) -> Money:
        return Money(amount_minor=row[column], currency=currency)

    return Payment(
        payment_id=str(row["payment_id"]),
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        status=_STATUS[Status(row["status"])],
        authorized=money("authorized_minor"),
        captured=money("captured_minor"),
        refunded=money("refunded_minor"),
        released=money("released_minor"),
        card_brand=row["card_brand"],
        card_last4=row["card_last4"],
        psp_reference=row["psp_reference"],
        decline_reason=_DECLINE.get(row["decline_reason"], DeclineReason.OTHER),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class PaymentsApi(PaymentsServiceBase):
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def get_payment(self, message: GetPaymentRequest) -> GetPaymentResponse:
        which = betterproto2.which_one_of(message, "key")[0]
        if which == "payment_id" and message.payment_id:
            row = await self.pool.fetchrow(
                "SELECT * FROM payment_intents WHERE payment_id = $1",
                _uuid(message.payment_id, "payment_id"),
            )
        elif which == "order_id" and message.order_id:
            # Checked first: a NUL would fail the query (UNKNOWN), not find nothing.
            order_id = checked_text(message.order_id, "order_id")
            # An order may have tried several cards: its latest intent answers.
            row = await self.pool.fetchrow(
                "SELECT * FROM payment_intents WHERE order_id = $1"
                " ORDER BY created_at DESC, payment_id LIMIT 1",
                order_id,
            )
        else:
            raise InvalidArgument("payment_id or order_id is required")
        if row is None:
            raise PaymentNotFound("no such payment")
        return GetPaymentResponse(payment=payment_message(row))

    async def ledger_balance(self, message: LedgerBalanceRequest) -> LedgerBalanceResponse:
        if message.account and message.account not in ledger.Account.__members__.values():
            raise InvalidArgument(f"unknown ledger account {message.account!r}")
        # Checked before it reaches PostgreSQL: a NUL in it would fail the query (UNKNOWN).
        currency = checked_currency(message.currency) if message.currency else ""
        payment_id = _uuid(message.payment_id, "payment_id") if message.payment_id else None
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            # One snapshot: the sums and the intents they are checked against agree.
            report = await ledger.check(
                conn, payment_id=payment_id, account=message.account, currency=currency
            )
        by_currency = sorted(report.net_by_currency.items())
        nets = [Money(amount_minor=n, currency=c) for c, n in by_currency]
        return LedgerBalanceResponse(
            balances=[
                AccountBalance(account=account, balance=Money(amount_minor=n, currency=currency))
                for (account, currency), n in sorted(report.balances.items())
            ],
            net=nets[0] if len(nets) == 1 else None,
            balanced=report.balanced,
            entry_count=report.entry_count,
            net_by_currency=nets,
            problems=report.problems,
            intent_count=report.intent_count,
        )
