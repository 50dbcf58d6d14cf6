"""Payment intents: authorize, capture, void and refund, each idempotent by the caller's key.

Every operation writes, in ONE transaction: the intent's new state, its ledger
movement, its event in the outbox and its idempotency record (the key, a hash
of the parameters and the first result). A retried call with the same key
finds the record and returns that result (or re-raises the same decline); the
same key with other parameters is an IdempotencyKeyConflict.

Capture, void and refund hold the intent's row lock across their PSP call, so
operations on one intent are serialized and the limits (captured <= authorized,
refunded <= captured) are checked against the current state. Every transaction
locks its key first (a transaction-scoped advisory lock, taken before any row), so
one key sent for two intents at once reaches the PSP once and the other call is an
IdempotencyKeyConflict.
Authorization does not hold its lock, nor a pooled connection, across its PSP
call: the "slow" card holds its answer longer than an activity may run, and a
compensating void (or any other payment's capture) must not wait behind it, for
the lock or for one of the pool's few connections. Instead the intent is
committed as `pending` first, the connection returned, the PSP called, and the
answer recorded in a second transaction on a connection taken anew; a void that
comes in between cancels the authorization at the PSP (by the payment id, its
PSP key) and marks the intent voided, and the late answer is then refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import asdict
from typing import Any

import asyncpg

from agora import outbox
from agora.db import lock_for_transaction
from agora.money import MAX_AMOUNT_MINOR
from contracts.agora.common.v1 import Money
from contracts.agora.payments.v1 import (
    DeclineReason,
    PaymentAuthorized,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
    PaymentVoided,
)
from workers.payments import ledger
from workers.payments.errors import (
    IdempotencyKeyConflict,
    InvalidPaymentRequest,
    PaymentAmountExceeded,
    PaymentError,
    PaymentNotFound,
    PaymentRequiresAction,
    PaymentStateConflict,
)
from workers.payments.errors import PaymentDeclined as Declined
from workers.payments.model import (
    AuthorizeInput,
    AuthorizeResult,
    CaptureInput,
    CaptureResult,
    RefundInput,
    RefundResult,
    Status,
    VoidInput,
    VoidResult,
    operation_id_for,
    payment_id_for,
    status_from_amounts,
)
from workers.payments.psp import (
    ActionRequired,
    Authorized,
    InvalidCardToken,
    PaymentServiceProvider,
    PspKeyReused,
    PspRejected,
    Receipt,
)

log = logging.getLogger(__name__)

TOPIC = "payments.events"
PRODUCER = "payments"
AGGREGATE = "payment"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Keys are caller-chosen strings; bounded so a record stays an index entry.
_MAX_KEY_LEN = 200
# The same bound for the other caller-chosen text (order and customer ids, indexed too).
_MAX_TEXT_LEN = 200
_DECLINE_REASONS = {
    "insufficient_funds": DeclineReason.INSUFFICIENT_FUNDS,
    "card_expired": DeclineReason.CARD_EXPIRED,
    "requires_action": DeclineReason.REQUIRES_ACTION,
}
# Intents a capture may apply to (given an open hold).
# VOIDED: after a void, nothing is open, unless the PSP released less than was open
# here (a capture it made was not recorded yet; see _release): that capture's retry
# then books what is left.
_CAPTURABLE = {
    Status.AUTHORIZED,
    Status.PARTIALLY_CAPTURED,
    Status.PARTIALLY_REFUNDED,
    Status.VOIDED,
}
_REFUNDABLE = {
    Status.PARTIALLY_CAPTURED,
    Status.CAPTURED,
    Status.PARTIALLY_REFUNDED,
}


def request_hash(operation: str, params: dict[str, Any]) -> str:
    canonical = json.dumps({"op": operation, **params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def checked_text(value: str, name: str, *, max_len: int = _MAX_TEXT_LEN) -> str:
    """`value` if PostgreSQL can store and compare it, else InvalidPaymentRequest.

    PostgreSQL text holds no NUL and only UTF-8 (a lone surrogate, "\\ud800", is
    none): such a value would fail its statement with a generic error, which an
    activity retries (a capture or void without a time budget: for ever) and the
    read API answers UNKNOWN. Refused here instead, never echoed (it may be card data).
    """
    if len(value) > max_len:
        raise InvalidPaymentRequest(f"{name} must be at most {max_len} characters")
    if "\x00" in value:
        raise InvalidPaymentRequest(f"{name} must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidPaymentRequest(f"{name} must be valid Unicode text") from None
    return value


def checked_currency(currency: str) -> str:
    if not _CURRENCY.fullmatch(currency):
        raise InvalidPaymentRequest("currency must be an ISO 4217 code like EUR")
    return currency


def _key(key: str) -> str:
    if not key or len(key) > _MAX_KEY_LEN:
        raise InvalidPaymentRequest(f"idempotency_key must be 1..{_MAX_KEY_LEN} characters")
    return checked_text(key, "idempotency_key", max_len=_MAX_KEY_LEN)


def _amount(amount_minor: int | None, *, optional: bool) -> int | None:
    if amount_minor is None and optional:
        return None
    if amount_minor is None or not 0 < amount_minor <= MAX_AMOUNT_MINOR:
        raise InvalidPaymentRequest(f"amount_minor must be between 1 and {MAX_AMOUNT_MINOR}")
    return amount_minor


def _intent_request(intent: asyncpg.Record) -> tuple[str, str, str, int, str]:
    """What the authorization that created a pending intent asked for."""
    return (
        intent["order_id"],
        intent["customer_id"],
        intent["currency"],
        intent["requested_minor"],
        intent["card_token"],
    )


def _payment_uuid(payment_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(payment_id)
    except ValueError:
        raise InvalidPaymentRequest("payment_id must be a UUID") from None


def _money(amount_minor: int, currency: str) -> Money:
    return Money(amount_minor=amount_minor, currency=currency)


class PaymentIntents:
    """The write side of payments, over its pool and a PSP."""

    def __init__(self, pool: asyncpg.Pool, psp: PaymentServiceProvider):
        self.pool = pool
        self.psp = psp

    # Idempotency records ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self, key: str) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on a pooled connection that holds the caller's key first.

        Each operation locks its intent's row, but one key could be sent for two
        intents, or for an authorize and a capture: serializing on the key too makes
        the second find the first's record and be a conflict, never a PSP call that
        fails only at the record's insert. The key is taken before any row, in every
        operation: an authorize that inserted its intent and then waited for the key
        held by a void of that intent, waiting in turn to insert it, was a deadlock.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await lock_for_transaction(conn, f"payments:{key}")
            yield conn

    async def _recorded(
        self, conn: asyncpg.Connection, key: str, operation: str, digest: str
    ) -> asyncpg.Record | None:
        """The first result under `key`, read in a `_transaction` on that key."""
        row = await conn.fetchrow(
            "SELECT operation, request_hash, outcome, result FROM payment_operations"
            " WHERE idempotency_key = $1",
            key,
        )
        if row is not None and (row["operation"] != operation or row["request_hash"] != digest):
            raise IdempotencyKeyConflict("this idempotency key was used for a different request")
        return row

    async def _record(
        self,
        conn: asyncpg.Connection,
        *,
        key: str,
        operation: str,
        payment_id: uuid.UUID,
        digest: str,
        outcome: str,
        result: dict[str, Any],
    ) -> None:
        await conn.execute(
            "INSERT INTO payment_operations"
            " (idempotency_key, operation, payment_id, request_hash, outcome, result)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
            key,
            operation,
            payment_id,
            digest,
            outcome,
            json.dumps(result),
        )

    @staticmethod
    def _replay_failure(row: asyncpg.Record) -> None:
        """Re-raise a recorded business failure (a decline is the first result too)."""
        result = json.loads(row["result"])
        if row["outcome"] == "declined":
            raise Declined(result["reason"], result["message"])
        if row["outcome"] == "requires_action":
            raise PaymentRequiresAction(result["next_action_url"])

    async def _lock(self, conn: asyncpg.Connection, payment_id: uuid.UUID) -> asyncpg.Record | None:
        return await conn.fetchrow(
            "SELECT * FROM payment_intents WHERE payment_id = $1 FOR UPDATE", payment_id
        )

    async def _event(
        self,
        conn: asyncpg.Connection,
        payment_id: uuid.UUID,
        payload: Any,
        workflow: outbox.WorkflowRef | None,
    ) -> None:
        await outbox.append(
            conn,
            producer=PRODUCER,
            topic=TOPIC,
            aggregate_type=AGGREGATE,
            aggregate_id=str(payment_id),
            payload=payload,
            workflow=workflow,
        )

    # Authorize ----------------------------------------------------------------

    async def authorize(
        self, data: AuthorizeInput, workflow: outbox.WorkflowRef | None = None
    ) -> AuthorizeResult:
        key = _key(data.idempotency_key)
        amount = _amount(data.amount_minor, optional=False)
        assert amount is not None
        checked_currency(data.currency)
        if not data.order_id:
            raise InvalidPaymentRequest("order_id is required")
        checked_text(data.order_id, "order_id")
        checked_text(data.customer_id, "customer_id")
        try:
            card = self.psp.card(data.card_token)
        except InvalidCardToken:
            # Never repeat the value: a card number passed by mistake must not be echoed.
            raise InvalidPaymentRequest(
                "card_token is not a card token of the PSP", field="card_token"
            ) from None
        payment_id = uuid.UUID(payment_id_for(key))
        digest = request_hash(
            "authorize",
            {
                "order_id": data.order_id,
                "customer_id": data.customer_id,
                "amount_minor": amount,
                "currency": data.currency,
                "card_token": data.card_token,
            },
        )
        async with self._transaction(key) as conn:
            # ON CONFLICT: an earlier attempt (or a void) made the row already.
            await conn.execute(
                "INSERT INTO payment_intents (payment_id, order_id, customer_id, currency,"
                " status, requested_minor, card_token, card_brand, card_last4)"
                " VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8)"
                " ON CONFLICT (payment_id) DO NOTHING",
                payment_id,
                data.order_id,
                data.customer_id,
                data.currency,
                amount,
                card.token,
                card.brand,
                card.last4,
            )
            intent, replayed = await self._pending_authorization(conn, payment_id, key, digest)
            if replayed is not None:
                return replayed
            # No result yet, but an attempt may be at the PSP: this one must ask
            # for the same (the PSP answers it with the first one's authorization).
            if _intent_request(intent) != (
                data.order_id, data.customer_id, data.currency, amount, card.token
            ):  # fmt: skip
                raise IdempotencyKeyConflict(
                    "this idempotency key was used for a different request"
                )

        # Outside any transaction and holding no connection: the PSP may be slow (see
        # the module docstring), and a held connection would make captures and the
        # compensating voids of other payments wait for one of the pool's few. Nothing
        # is held across the call: the pending intent, committed above, is what a
        # retry (compared with it) and a void (which cancels it) find meanwhile, and
        # the answer is recorded only if the intent is still pending below.
        try:
            answer = await self.psp.authorize(
                key=str(payment_id),
                card_token=card.token,
                amount_minor=amount,
                currency=data.currency,
            )
        except PspRejected:
            raise PaymentStateConflict(f"payment {payment_id} was voided") from None

        async with self._transaction(key) as conn:
            # A concurrent attempt may have recorded it first; a void, voided it.
            _, replayed = await self._pending_authorization(conn, payment_id, key, digest)
            if replayed is not None:
                return replayed
            failure = await self._record_authorization(
                conn, payment_id, key, digest, data, amount, answer, workflow
            )
            if failure is None:
                result = AuthorizeResult(
                    payment_id=str(payment_id),
                    order_id=data.order_id,
                    status=str(Status.AUTHORIZED),
                    amount_minor=amount,
                    currency=data.currency,
                    card_brand=card.brand,
                    card_last4=card.last4,
                    psp_reference=answer.reference if isinstance(answer, Authorized) else "",
                )
                await self._record(
                    conn,
                    key=key,
                    operation="authorize",
                    payment_id=payment_id,
                    digest=digest,
                    outcome="ok",
                    result=asdict(result),
                )
        if failure is not None:
            log.info(
                "payment not authorized",
                extra={"payment_id": str(payment_id), "reason": failure.code},
            )
            raise failure
        log.info(
            "payment authorized",
            extra={"payment_id": str(payment_id), "card_last4": card.last4, "amount": amount},
        )
        return result

    async def _pending_authorization(
        self, conn: asyncpg.Connection, payment_id: uuid.UUID, key: str, digest: str
    ) -> tuple[asyncpg.Record, AuthorizeResult | None]:
        """Lock the intent, then look for the result recorded for this key (a
        concurrent attempt that finished between the two would otherwise look like a
        conflict): that result (its failure raised again), else the intent, which
        must still be pending."""
        intent = await self._lock(conn, payment_id)
        recorded = await self._recorded(conn, key, "authorize", digest)
        if recorded is not None:
            self._replay_failure(recorded)
            return intent, AuthorizeResult(**json.loads(recorded["result"]))
        if intent is None or intent["status"] != Status.PENDING:
            status = intent["status"] if intent else "gone"
            raise PaymentStateConflict(f"payment {payment_id} is {status}")
        return intent, None

    async def _record_authorization(
        self,
        conn: asyncpg.Connection,
        payment_id: uuid.UUID,
        key: str,
        digest: str,
        data: AuthorizeInput,
        amount: int,
        answer: Any,
        workflow: outbox.WorkflowRef | None,
    ) -> Declined | PaymentRequiresAction | None:
        """Write the PSP's answer; returns the failure to raise after commit, if any."""
        if isinstance(answer, Authorized):
            await conn.execute(
                "UPDATE payment_intents SET status = 'authorized', authorized_minor = $2,"
                " psp_reference = $3, updated_at = now() WHERE payment_id = $1",
                payment_id,
                amount,
                answer.reference,
            )
            await ledger.post(
                conn,
                movement_id=payment_id,
                payment_id=payment_id,
                kind=ledger.Movement.AUTHORIZE,
                amount_minor=amount,
                currency=data.currency,
            )
            card_last4 = self.psp.card(data.card_token).last4
            await self._event(
                conn,
                payment_id,
                PaymentAuthorized(
                    payment_id=str(payment_id),
                    order_id=data.order_id,
                    amount=_money(amount, data.currency),
                    card_last4=card_last4,
                    psp_reference=answer.reference,
                ),
                workflow,
            )
            return None
        failure: Declined | PaymentRequiresAction
        if isinstance(answer, ActionRequired):
            status, reason, message = Status.REQUIRES_ACTION, "requires_action", ""
            failure = PaymentRequiresAction(answer.next_action_url)
            result = {"next_action_url": answer.next_action_url}
            outcome = "requires_action"
        else:
            status, reason, message = Status.DECLINED, answer.reason, answer.message
            failure = Declined(reason, message)
            result = {"reason": reason, "message": failure.detail}
            outcome = "declined"
        await conn.execute(
            "UPDATE payment_intents SET status = $2, decline_reason = $3, updated_at = now()"
            " WHERE payment_id = $1",
            payment_id,
            str(status),
            reason,
        )
        await self._event(
            conn,
            payment_id,
            PaymentDeclined(
                payment_id=str(payment_id),
                order_id=data.order_id,
                amount=_money(amount, data.currency),
                reason=_DECLINE_REASONS.get(reason, DeclineReason.OTHER),
                psp_message=message,
            ),
            workflow,
        )
        await self._record(
            conn,
            key=key,
            operation="authorize",
            payment_id=payment_id,
            digest=digest,
            outcome=outcome,
            result=result,
        )
        return failure

    # Capture ------------------------------------------------------------------

    async def _move(
        self,
        conn: asyncpg.Connection,
        intent: asyncpg.Record,
        movement: ledger.Movement,
        key: str,
        amount: int,
    ) -> tuple[uuid.UUID, int, Status]:
        """Capture or refund `amount` at the PSP, then record it in the caller's
        transaction: the intent's running total and status, and the ledger movement.
        Returns the operation's id, the new running total and the new status."""
        operation, column, psp_call = {
            ledger.Movement.CAPTURE: ("capture", "captured_minor", self.psp.capture),
            ledger.Movement.REFUND: ("refund", "refunded_minor", self.psp.refund),
        }[movement]
        payment_id, currency = intent["payment_id"], intent["currency"]
        try:
            await psp_call(
                key=f"{operation}:{key}",
                authorization_key=str(payment_id),
                amount_minor=amount,
                currency=currency,
            )
        except PspRejected as exc:
            raise _refused(operation, exc) from None
        amounts = {
            name: intent[name]
            for name in ("authorized_minor", "captured_minor", "released_minor", "refunded_minor")
        }
        amounts[column] += amount
        status = status_from_amounts(
            amounts["authorized_minor"], amounts["captured_minor"], amounts["released_minor"],
            amounts["refunded_minor"],
        )  # fmt: skip
        # `column` is one of two names from the table above, never input.
        await conn.execute(
            f"UPDATE payment_intents SET {column} = $2, status = $3, updated_at = now()"
            " WHERE payment_id = $1",
            payment_id,
            amounts[column],
            str(status),
        )
        operation_id = uuid.UUID(operation_id_for(operation, key))
        await ledger.post(
            conn,
            movement_id=operation_id,
            payment_id=payment_id,
            kind=movement,
            amount_minor=amount,
            currency=currency,
        )
        return operation_id, amounts[column], status

    async def capture(
        self, data: CaptureInput, workflow: outbox.WorkflowRef | None = None
    ) -> CaptureResult:
        key = _key(data.idempotency_key)
        requested = _amount(data.amount_minor, optional=True)
        payment_id = _payment_uuid(data.payment_id)
        digest = request_hash("capture", {"payment_id": str(payment_id), "amount": requested})
        async with self._transaction(key) as conn:
            intent = await self._lock(conn, payment_id)
            recorded = await self._recorded(conn, key, "capture", digest)
            if recorded is not None:
                return CaptureResult(**json.loads(recorded["result"]))
            intent = _found(intent, payment_id)
            open_minor = (
                intent["authorized_minor"] - intent["captured_minor"] - intent["released_minor"]
            )
            amount = _movable(
                intent,
                requested,
                available=open_minor,
                allowed=_CAPTURABLE,
                nothing=(
                    f"payment {payment_id} is {intent['status']}: nothing authorized to capture"
                ),
                too_much="capture of {amount} exceeds the {available} still authorized",
            )
            currency = intent["currency"]
            capture_id, captured, status = await self._move(
                conn, intent, ledger.Movement.CAPTURE, key, amount
            )
            await self._event(
                conn,
                payment_id,
                PaymentCaptured(
                    payment_id=str(payment_id),
                    order_id=intent["order_id"],
                    amount=_money(amount, currency),
                    total_captured=_money(captured, currency),
                ),
                workflow,
            )
            result = CaptureResult(
                payment_id=str(payment_id),
                capture_id=str(capture_id),
                amount_minor=amount,
                total_captured_minor=captured,
                remaining_authorized_minor=open_minor - amount,
                currency=currency,
                status=str(status),
            )
            await self._record(
                conn,
                key=key,
                operation="capture",
                payment_id=payment_id,
                digest=digest,
                outcome="ok",
                result=asdict(result),
            )
        log.info("payment captured", extra={"payment_id": str(payment_id), "amount": amount})
        return result

    # Void ---------------------------------------------------------------------

    async def void(self, data: VoidInput, workflow: outbox.WorkflowRef | None = None) -> VoidResult:
        """Release what is still held. Always safe as a compensation (see VoidResult)."""
        key = _key(data.idempotency_key)
        payment_id = _payment_uuid(data.payment_id)
        digest = request_hash("void", {"payment_id": str(payment_id)})
        async with self._transaction(key) as conn:
            intent = await self._lock(conn, payment_id)
            recorded = await self._recorded(conn, key, "void", digest)
            if recorded is not None:
                return VoidResult(**json.loads(recorded["result"]))
            if intent is None:
                intent = await self._voided_in_advance(conn, payment_id)
            released, status, currency = await self._release(conn, payment_id, intent, key)
            if intent is not None and (released or intent["status"] != status):
                await self._event(
                    conn,
                    payment_id,
                    PaymentVoided(
                        payment_id=str(payment_id),
                        order_id=intent["order_id"],
                        amount=_money(released, currency),
                    ),
                    workflow,
                )
            result = VoidResult(str(payment_id), released, currency, str(status))
            await self._record(
                conn,
                key=key,
                operation="void",
                payment_id=payment_id,
                digest=digest,
                outcome="ok",
                result=asdict(result),
            )
        log.info("payment voided", extra={"payment_id": str(payment_id), "amount": released})
        return result

    async def _voided_in_advance(
        self, conn: asyncpg.Connection, payment_id: uuid.UUID
    ) -> asyncpg.Record | None:
        """A voided intent for a payment never seen here (None), or, when another
        transaction made its intent meanwhile (the authorization's first, or another
        void), that intent, locked: the plain INSERT waited for that transaction, then
        failed with a UniqueViolationError that was retried as a fault."""
        made = await conn.fetchval(
            "INSERT INTO payment_intents (payment_id, order_id, currency, status)"
            " VALUES ($1, '', '', 'voided') ON CONFLICT (payment_id) DO NOTHING RETURNING true",
            payment_id,
        )
        return None if made else await self._lock(conn, payment_id)

    async def _psp_void(self, psp_void_key: str, payment_id: uuid.UUID) -> Receipt:
        """Cancel the authorization at the PSP; its refusal is for good (not retried)."""
        try:
            return await self.psp.void(key=psp_void_key, authorization_key=str(payment_id))
        except PspRejected as exc:
            raise _refused("void", exc) from None

    async def _release(
        self,
        conn: asyncpg.Connection,
        payment_id: uuid.UUID,
        intent: asyncpg.Record | None,
        key: str,
    ) -> tuple[int, Status, str]:
        """Release the open hold; returns (released amount, new status, currency)."""
        psp_void_key = f"void:{key}"
        if intent is None:
            # Voided before its authorization was ever recorded (_voided_in_advance
            # left a voided intent, so a late authorize is refused): cancel it at the PSP.
            await self._psp_void(psp_void_key, payment_id)
            return 0, Status.VOIDED, ""
        status = Status(intent["status"])
        currency = intent["currency"]
        if status in (Status.PENDING, Status.REQUIRES_ACTION):
            # An authorization in flight (or waiting for the cardholder) is cancelled.
            await self._psp_void(psp_void_key, payment_id)
            await conn.execute(
                "UPDATE payment_intents SET status = 'voided', updated_at = now()"
                " WHERE payment_id = $1",
                payment_id,
            )
            return 0, Status.VOIDED, currency
        if status is Status.DECLINED:
            return 0, status, currency
        open_minor = (
            intent["authorized_minor"] - intent["captured_minor"] - intent["released_minor"]
        )
        if open_minor == 0:
            if intent["released_minor"] > 0 or intent["captured_minor"] == 0:
                return 0, status, currency  # already released: nothing more to do
            if intent["refunded_minor"] >= intent["captured_minor"]:
                # Captured and refunded in full (a saga's compensations run the refund
                # first, then this void): nothing is held and nothing is owed.
                return 0, status, currency
            raise PaymentStateConflict(f"payment {payment_id} is captured: refund it instead")
        receipt = await self._psp_void(psp_void_key, payment_id)
        if receipt.released_minor is not None and receipt.released_minor < open_minor:
            # The PSP had less open than is recorded here: a capture it made was not
            # recorded (its transaction lost after the PSP's answer). Only what the PSP
            # released is booked; that capture's retry books the rest, as captured.
            log.warning(
                "the PSP released less than was open: a capture is not recorded yet",
                extra={
                    "payment_id": str(payment_id),
                    "open": open_minor,
                    "released": receipt.released_minor,
                },
            )
            open_minor = receipt.released_minor
            if open_minor == 0:
                return 0, status, currency
        released = intent["released_minor"] + open_minor
        new_status = status_from_amounts(
            intent["authorized_minor"], intent["captured_minor"], released,
            intent["refunded_minor"],
        )  # fmt: skip
        await conn.execute(
            "UPDATE payment_intents SET released_minor = $2, status = $3, updated_at = now()"
            " WHERE payment_id = $1",
            payment_id,
            released,
            str(new_status),
        )
        await ledger.post(
            conn,
            movement_id=uuid.UUID(operation_id_for("void", key)),
            payment_id=payment_id,
            kind=ledger.Movement.VOID,
            amount_minor=open_minor,
            currency=currency,
        )
        return open_minor, new_status, currency

    # Refund -------------------------------------------------------------------

    async def refund(
        self, data: RefundInput, workflow: outbox.WorkflowRef | None = None
    ) -> RefundResult:
        key = _key(data.idempotency_key)
        requested = _amount(data.amount_minor, optional=True)
        payment_id = _payment_uuid(data.payment_id)
        digest = request_hash("refund", {"payment_id": str(payment_id), "amount": requested})
        async with self._transaction(key) as conn:
            intent = await self._lock(conn, payment_id)
            recorded = await self._recorded(conn, key, "refund", digest)
            if recorded is not None:
                return RefundResult(**json.loads(recorded["result"]))
            intent = _found(intent, payment_id)
            amount = _movable(
                intent,
                requested,
                available=intent["captured_minor"] - intent["refunded_minor"],
                allowed=_REFUNDABLE,
                nothing=f"payment {payment_id} is {intent['status']}: nothing captured to refund",
                too_much="refund of {amount} exceeds the {available} captured and not refunded",
            )
            currency = intent["currency"]
            refund_id, refunded, status = await self._move(
                conn, intent, ledger.Movement.REFUND, key, amount
            )
            await self._event(
                conn,
                payment_id,
                PaymentRefunded(
                    payment_id=str(payment_id),
                    order_id=intent["order_id"],
                    refund_id=str(refund_id),
                    amount=_money(amount, currency),
                    total_refunded=_money(refunded, currency),
                ),
                workflow,
            )
            result = RefundResult(
                payment_id=str(payment_id),
                refund_id=str(refund_id),
                amount_minor=amount,
                total_refunded_minor=refunded,
                currency=currency,
                status=str(status),
            )
            await self._record(
                conn,
                key=key,
                operation="refund",
                payment_id=payment_id,
                digest=digest,
                outcome="ok",
                result=asdict(result),
            )
        log.info("payment refunded", extra={"payment_id": str(payment_id), "amount": amount})
        return result


def _refused(operation: str, exc: PspRejected) -> PaymentError:
    """The PSP's refusal as the caller's error: both are for good, never retried."""
    if isinstance(exc, PspKeyReused):
        # The key reached the PSP with another request (a crash kept the first call
        # from being recorded here); the PSP's first answer is not this request's.
        return IdempotencyKeyConflict(f"this idempotency key was used for another {operation}")
    return PaymentStateConflict(f"the PSP refused the {operation}: {exc}")


def _found(intent: asyncpg.Record | None, payment_id: uuid.UUID) -> asyncpg.Record:
    if intent is None:
        raise PaymentNotFound(f"no payment {payment_id}")
    return intent


def _movable(
    intent: asyncpg.Record,
    requested: int | None,
    *,
    available: int,
    allowed: Collection[str],
    nothing: str,
    too_much: str,
) -> int:
    """How much a capture or refund moves: all that is available, or the amount asked,
    which may not exceed it; nothing available (or a status that allows none) is a conflict."""
    if intent["status"] not in allowed or available == 0:
        raise PaymentStateConflict(nothing)
    amount = available if requested is None else requested
    if amount > available:
        raise PaymentAmountExceeded(too_much.format(amount=amount, available=available))
    return amount
