"""The order routes' request bodies: what they refuse before anything starts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.schemas_orders import CompletePaymentRequest, PaymentRequest


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
    ],
)
def test_a_card_number_where_a_token_belongs_is_refused(pasted: str) -> None:
    for schema in (PaymentRequest, CompletePaymentRequest):
        with pytest.raises(ValidationError, match="card number, not a token"):
            schema.model_validate({"card_token": pasted})


@pytest.mark.parametrize(
    "token", ["tok_ok_visa_4242_0123456789012345", "tok_abcdefgh", "12345678", "pm_1N2b3C4d"]
)
def test_a_token_is_taken(token: str) -> None:
    # Only a whole card number is refused: a token may hold digits, even many in a row.
    assert PaymentRequest.model_validate({"card_token": token}).card_token == token
