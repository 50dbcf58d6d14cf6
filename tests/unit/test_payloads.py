"""An `int` field takes an integer: a fraction or a bool is refused, not truncated."""

from __future__ import annotations

import dataclasses
import json

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter

from agora import config
from agora.payloads import ExactInts
from agora.temporal import data_converter
from workers.payments.model import CaptureInput, RefundInput


def encoded(document: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=document.encode())


def converter() -> DataConverter:
    return data_converter(config.load({})).payload_converter  # type: ignore[return-value]


@pytest.mark.parametrize(
    "amount", ["1998.9999999999998", "10.7", "true"], ids=["cents-by-float", "fraction", "bool"]
)
def test_an_amount_that_is_no_integer_is_refused_not_truncated(amount: str) -> None:
    # The SDK's own conversion made 19.99 * 100 a capture of 1998 and `true` a refund
    # of 1, without an error.
    document = f'{{"idempotency_key": "k", "payment_id": "p", "amount_minor": {amount}}}'
    with pytest.raises(TypeError, match="Failed converting field amount_minor"):
        converter().from_payloads([encoded(document)], [CaptureInput])
    with pytest.raises(TypeError, match="an integer is required"):
        ExactInts().to_typed_value(int, json.loads(amount))


def test_integers_and_whole_floats_and_none_are_taken() -> None:
    taken = converter().from_payloads(
        [
            encoded('{"idempotency_key": "k", "payment_id": "p", "amount_minor": 1999}'),
            encoded('{"idempotency_key": "k", "payment_id": "p", "amount_minor": 10.0}'),
            encoded('{"idempotency_key": "k", "payment_id": "p", "amount_minor": null}'),
        ],
        [CaptureInput, CaptureInput, CaptureInput],
    )
    assert [capture.amount_minor for capture in taken] == [1999, 10, None]
    refund = RefundInput("k", "p", 5, "r")
    (again,) = converter().from_payloads(converter().to_payloads([refund]), [RefundInput])
    assert dataclasses.asdict(again) == dataclasses.asdict(refund)
