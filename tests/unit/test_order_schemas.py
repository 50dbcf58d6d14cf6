"""The order routes' request bodies: what they refuse before anything starts."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agora.money import MAX_AMOUNT_MINOR
from gateway.schemas_orders import CompletePaymentRequest, PaymentRequest, PlaceOrderRequest


@pytest.mark.parametrize(
    "pasted",
    [
        "4242424242424242",
        "4242 4242 4242 4242",
        "4000-0000-0000-0002",
        "378282246310005",
        # Whitespace the PSP's tokenizer also looks through.
        "4242424242424242\n",
        "4242\t4242\t4242\t4242",
        "4242\u00a04242\u00a04242\u00a04242",
        "4242.4242.4242.4242",
        # A number with more beside it: an expiry, a CVC, a word.
        "4242424242424242 12/30",
        "4242 4242 4242 4242 exp 12/2030",
        "4242424242424242/123/1230",
        "card 4242424242424242",
        "tok_4242424242424242",
        "378282246310005 04/29",
        "4242 4242 4242 4242 12 2030",
        # ... or stuck to it, with no separator: an expiry, a CVC, a prefix.
        "42424242424242421230",
        "55555555555544441230",
        "42424242424242420430123",
        "pan:4242424242424242123",
        "tok_4242424242424242123",
        "1230 42424242424242421230",
    ],
)
def test_a_card_number_where_a_token_belongs_is_refused(pasted: str) -> None:
    for schema in (PaymentRequest, CompletePaymentRequest):
        with pytest.raises(ValidationError, match="card number, not a token"):
            schema.model_validate({"card_token": pasted})


@pytest.mark.parametrize(
    "token", ["tok_ok_visa_4242_1111111111111111", "tok_abcdefgh", "12345678", "pm_1N2b3C4d"]
)
def test_a_token_is_taken(token: str) -> None:
    # A token may hold digits, even many in a row, only not a Luhn-valid number.
    assert PaymentRequest.model_validate({"card_token": token}).card_token == token


def place_order(**changes: object) -> dict[str, object]:
    return {
        "lines": [{"sku": "SKU-1", "quantity": 1}],
        "currency": "EUR",
        "payment": {"card_token": "tok_abcdefgh"},
        **changes,
    }


@pytest.mark.parametrize("bad", [-1, 0, MAX_AMOUNT_MINOR + 1, "2000", 20.5, True])
def test_an_expected_total_that_is_no_amount_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="expected_total_minor"):
        PlaceOrderRequest.model_validate_json(json.dumps(place_order(expected_total_minor=bad)))


@pytest.mark.parametrize("total", [1, 2000, MAX_AMOUNT_MINOR])
def test_an_expected_total_is_taken_and_may_be_left_out(total: int) -> None:
    body = json.dumps(place_order(expected_total_minor=total))
    assert PlaceOrderRequest.model_validate_json(body).expected_total_minor == total
    for left_out in (place_order(), place_order(expected_total_minor=None)):
        parsed = PlaceOrderRequest.model_validate_json(json.dumps(left_out))
        assert parsed.expected_total_minor is None


@pytest.mark.parametrize(
    "pasted", ["4242/4242/4242/4242 exp 12/30", "4242_4242_4242_4242 12/30", "4242,4242,4242,4242"]
)
def test_a_card_number_with_any_separator_is_refused(pasted: str) -> None:
    with pytest.raises(ValidationError, match="card number, not a token"):
        PaymentRequest.model_validate({"card_token": pasted})
