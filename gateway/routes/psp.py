"""The simulated PSP's card tokenization, as a payment page would call it.

In production the shop's payment page sends the card number straight to the
PSP and gets a token back; the platform only ever sees the token. Locally the
PSP is simulated (workers/payments/psp_sim.py), and this route stands in for
its tokenization endpoint so that a client can place an order with one of the
documented test cards. The number is never logged, stored or echoed.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field

from agora import scopes
from gateway.problems import Problem
from gateway.routing import Route
from gateway.schemas import Answer, Strict
from workers.payments.psp import InvalidCardToken
from workers.payments.psp_sim import tokenize


class CardRequest(Strict):
    number: Annotated[str, Field(min_length=12, max_length=23, description="Card number (PAN)")]
    exp_month: Annotated[int, Field(ge=1, le=12)]
    exp_year: Annotated[int, Field(ge=2000, le=2100)]


class CardTokenAnswer(Answer):
    token: str = Field(description="Use as payment.card_token of POST /v1/orders")
    brand: str
    last4: str


async def tokenize_card(request: web.Request, body: CardRequest) -> CardTokenAnswer:
    try:
        card = tokenize(body.number, body.exp_month, body.exp_year)
    except InvalidCardToken as error:
        raise Problem("invalid-argument", str(error)) from None  # never repeats the number
    return CardTokenAnswer(token=card.token, brand=card.brand, last4=card.last4)


ROUTES = [
    Route(
        "POST",
        "/v1/payments/tokens",
        tokenize_card,
        "Tokenize a test card at the simulated PSP (stands in for the PSP's payment page)",
        "orders",
        auth=True,
        scopes=frozenset({scopes.ORDERS_WRITE}),
        route_class="write",
        body=CardRequest,
        response=CardTokenAnswer,
        status=201,
        problems=("invalid-argument",),
        secret_answers=True,
    ),
]
