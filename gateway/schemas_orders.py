"""Request and response bodies of the order routes (strict, like gateway/schemas.py)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from agora.cards import holds_card_number
from agora.money import MAX_AMOUNT_MINOR
from gateway.schemas import Answer, Strict
from gateway.schemas_catalog import Currency

SKU = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
MAX_LINES = 50
MAX_QUANTITY = 100


class OrderLineRequest(Strict):
    sku: SKU
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY)]


def _not_a_card_number(token: str) -> str:
    """A card number pasted where its token belongs is refused here, before it could
    reach the order's workflow input (and so Temporal's history): a whole value of
    12-19 digits once separators (spaces, tabs, newlines, no-break spaces, dashes,
    dots) are looked through, as the PSP's tokenizer takes it, or a Luhn-valid number
    anywhere in it ("4242 4242 4242 4242 12/30", "card 4242424242424242")."""
    digits = re.sub(r"[\W_]", "", token)
    whole = digits.isascii() and digits.isdigit() and 12 <= len(digits) <= 19
    if whole or holds_card_number(token):
        raise ValueError(
            "this is a card number, not a token: exchange it at POST /v1/payments/tokens"
        )
    return token


CARD_TOKEN = Annotated[
    str,
    Field(
        min_length=8,
        max_length=128,
        description="A PSP token (POST /v1/payments/tokens makes one from a test card)",
    ),
    AfterValidator(_not_a_card_number),
]


class PaymentRequest(Strict):
    card_token: CARD_TOKEN


class PlaceOrderRequest(Strict):
    lines: Annotated[list[OrderLineRequest], Field(min_length=1, max_length=MAX_LINES)]
    currency: Currency
    payment: PaymentRequest
    expected_total_minor: Annotated[
        int | None,
        Field(
            ge=1,
            le=MAX_AMOUNT_MINOR,
            description=(
                "The total the customer was shown (e.g. in the cart), in minor units of"
                " `currency`. If the current prices come to more than this, beyond the"
                " platform's tolerance (AGORA_ORDER_PRICE_TOLERANCE_BPS, 0 by default),"
                " the order is rejected (422 order-rejected, `reason` PRICE_CHANGED, its"
                " detail naming both totals) before anything is reserved or charged:"
                " review it and place it again with a new Idempotency-Key. A lower total"
                " is accepted, and charged. Omit it to take the current prices. Part of"
                " what the Idempotency-Key names: a retry must send the same value."
            ),
        ),
    ] = None


class CancelOrderRequest(Strict):
    reason: Annotated[str, Field(max_length=500)] = "cancelled by the customer"


class RefundOrderRequest(Strict):
    amount_minor: Annotated[
        int | None,
        Field(ge=1, le=MAX_AMOUNT_MINOR, description="Omit to refund everything left"),
    ] = None
    reason: Annotated[str, Field(max_length=500)] = ""


class CompletePaymentRequest(Strict):
    card_token: CARD_TOKEN


class ListOrdersQuery(Strict):
    model_config = Strict.model_config | {"strict": False}
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: Annotated[str, Field(max_length=200)] = ""


class MoneyAnswer(Answer):
    amount_minor: int
    currency: str


class OrderLineAnswer(Answer):
    sku: str
    title: str
    quantity: int
    unit_price_minor: int
    line_total_minor: int


class StatusChangeAnswer(Answer):
    status: str
    changed_at: datetime | None = None
    reason: str = ""


class OrderAnswer(Answer):
    order_id: str
    status: str
    currency: str
    total_minor: int
    refunded_minor: int = 0
    lines: list[OrderLineAnswer]
    reason: str = ""
    payment_id: str = ""
    next_action_url: str = Field(default="", description="Set while a payment needs the customer")
    status_history: list[StatusChangeAnswer] = []
    created_at: datetime | None = None
    links: dict[str, str] = Field(
        description="self: this order; workflow: its saga in the Temporal web UI"
    )


class OrderListAnswer(Answer):
    orders: list[OrderAnswer]
    next_cursor: str = ""
