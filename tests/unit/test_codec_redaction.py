"""The codec server decodes payloads for staff, but never a secret inside them.

Payloads are built as the platform writes them: its dataclasses through the SDK's
JSON converter, sealed by agora/codec.py, then decoded as `/codec/decode` does.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from argon2 import PasswordHasher
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from activities.identity import RegisterAccountInput
from activities.orders import OrderLineInput, PricedLine, PricedOrder
from agora.codec import EncryptionCodec, KeyRing
from gateway.codec import REDACTED, decode_each, redacted
from workers.orders.model import CompletePaymentInput, OrderInput

CODEC = EncryptionCodec(KeyRing("k1", {"k1": b"\x01" * 32}))
CONVERTER = dataclasses.replace(
    DataConverter.default,
    payload_codec=CODEC,
    failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
)
# Cheap parameters: the hash's format is what matters here, not its cost.
HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("correct horse")


async def decoded_for_staff(*values: object) -> list[Payload]:
    """What /codec/decode answers for these values as stored in a history."""
    sealed = await CONVERTER.encode(list(values))
    opened, failed = await decode_each(CODEC, sealed)
    assert failed == 0
    return [redacted(payload) for payload in opened]


def document(payload: Payload) -> object:
    return json.loads(payload.data)


async def test_an_admins_registration_decodes_without_its_password_hash() -> None:
    registration = RegisterAccountInput(
        account_id="7d0e1c7e-5b1a-4d8e-9a35-0c6f3f0e9b11",
        email="admin@example.com",
        display_name="Admin",
        password_hash=HASH,
        roles=["admin"],
    )
    (payload,) = await decoded_for_staff(registration)
    assert b"argon2" not in payload.data
    expected = {**dataclasses.asdict(registration), "password_hash": REDACTED}
    assert document(payload) == expected
    assert payload.metadata["encoding"] == b"json/plain"


async def test_an_order_input_decodes_whole_but_for_its_card_token() -> None:
    order = OrderInput(
        order_id="o-1",
        customer_id="c-1",
        idempotency_key="k-1",
        lines=[OrderLineInput("SKU-1", 2)],
        currency="EUR",
        card_token="tok_ok_visa_4242_00112233aabbccdd",
        expected_total_minor=4900,
    )
    order_payload, completion = await decoded_for_staff(
        order, CompletePaymentInput(order.card_token, order.order_id)
    )
    assert document(order_payload) == {**dataclasses.asdict(order), "card_token": REDACTED}
    assert document(completion) == {"card_token": REDACTED, "order_id": "o-1"}


async def test_a_payload_without_secrets_is_answered_as_it_was_written() -> None:
    priced = PricedOrder([PricedLine("SKU-1", "Wok · 28 cm", 2, 2450, 4900)], "EUR", 4900)
    (payload,) = await decoded_for_staff(priced)
    (written,) = await DataConverter.default.encode([priced])
    assert payload == written  # the same bytes: nothing re-serialized


async def test_a_failure_quoting_a_hash_shows_the_rest_of_its_message() -> None:
    failure = Failure()
    error = RuntimeError(f"Failing row contains (a@b.c, {HASH}, {{admin}})")
    await CONVERTER.encode_failure(error, failure)
    assert failure.message == "Encoded failure"  # the message travels in the payload
    (payload,) = await decoded_for_staff_raw(failure.encoded_attributes)
    attributes = document(payload)
    assert isinstance(attributes, dict)
    assert attributes["message"] == f"Failing row contains (a@b.c, {REDACTED}, {{admin}})"


async def decoded_for_staff_raw(*sealed: Payload) -> list[Payload]:
    opened, _ = await decode_each(CODEC, list(sealed))
    return [redacted(payload) for payload in opened]


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        # json/protobuf names fields in camelCase; nesting and lists do not hide a field.
        (b'{"account":{"passwordHash":"x"}}', {"account": {"passwordHash": REDACTED}}),
        (b'[{"lines":[]},{"CARD-TOKEN":"t"}]', [{"lines": []}, {"CARD-TOKEN": REDACTED}]),
        (HASH.encode().join([b'"', b'"']), REDACTED),  # a bare string argument
    ],
    ids=["camel-case", "in-a-list", "bare-hash"],
)
async def test_secrets_are_found_wherever_the_json_holds_them(
    written: bytes, shown: object
) -> None:
    for encoding in (b"json/plain", b"json/protobuf"):
        clear = Payload(metadata={"encoding": encoding}, data=written)
        (payload,) = await decoded_for_staff_raw(*await CODEC.encode([clear]))
        assert document(payload) == shown


async def test_json_that_cannot_be_read_is_not_shown() -> None:
    deep = b"[" * 100_000 + b'{"password_hash":"x"}' + b"]" * 100_000
    for data in (deep, b'{"password_hash": "x"', b"\xff"):
        clear = Payload(metadata={"encoding": b"json/plain"}, data=data)
        (payload,) = await decoded_for_staff_raw(*await CODEC.encode([clear]))
        assert document(payload) == REDACTED
