"""The JSON payload converter every client and worker uses: the SDK's, but an `int`
field takes an integer.

The SDK converts a JSON number to an `int` field with `int(value)`: a caller's
`19.99 * 100` (1998.9999999999998) became 1998 and `true` became 1, and payments
captured or refunded the wrong amount without an error. A whole float (10.0) is still
taken as 10. A value refused here fails the decoding: an activity attempt fails
("Failed decoding arguments", retried, visible) and a workflow task fails, instead
of acting on a number nobody sent. Its own module, importing the SDK's converter only:
the workflow sandbox instantiates the class inside itself.
"""

from __future__ import annotations

from typing import Any

from temporalio.converter import (
    CompositePayloadConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
)


class ExactInts(JSONTypeConverter):
    """Refuses a bool, or a float with a fraction, for an `int` hint; leaves the rest
    to the SDK."""

    def to_typed_value(self, hint: type, value: Any) -> Any:
        if hint is int and (
            isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())
        ):
            raise TypeError(f"an integer is required, not {type(value).__name__} {value!r}")
        return JSONTypeConverter.Unhandled


class PayloadConverter(CompositePayloadConverter):
    """The SDK's default encodings, its JSON one with ExactInts."""

    def __init__(self) -> None:
        super().__init__(
            *(
                JSONPlainPayloadConverter(custom_type_converters=[ExactInts()])
                if isinstance(converter, JSONPlainPayloadConverter)
                else converter
                for converter in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )
