"""Properties of the event envelope (contracts EventEnvelope) and the consumer's decode path.

Every event on Kafka is an EventEnvelope; a consumer must never be stopped by
what it reads. Any byte string either decodes to an envelope that reaches the
handler, or goes to the dead-letter topic with a reason: `EventConsumer._handle`
never raises and never does both.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from aiokafka import ConsumerRecord
from hypothesis import example, given
from hypothesis import strategies as st

from agora.config import load
from agora.kafka import ConsumerSpec, EventConsumer
from contracts.agora.events.v1 import EventEnvelope
from tests.fuzz.settings import PROPERTY

TEXT = st.text(max_size=40)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TIMES = st.datetimes(
    min_value=dt.datetime(1970, 1, 1),
    max_value=dt.datetime(9999, 12, 31),
    timezones=st.just(dt.UTC),
)


@st.composite
def envelopes(draw: st.DrawFn) -> EventEnvelope:
    return EventEnvelope(
        event_id=draw(TEXT),
        event_type=draw(TEXT),
        aggregate_type=draw(TEXT),
        aggregate_id=draw(TEXT),
        sequence=draw(INT64),
        occurred_at=draw(st.none() | TIMES),
        producer=draw(TEXT),
        traceparent=draw(TEXT),
        tracestate=draw(TEXT),
        workflow_id=draw(TEXT),
        run_id=draw(TEXT),
        payload=draw(st.binary(max_size=200)),
        payload_type=draw(TEXT),
    )


def fields(envelope: EventEnvelope) -> dict[str, Any]:
    return {name: getattr(envelope, name) for name in envelope.__dataclass_fields__}


@PROPERTY
@given(envelopes())
def test_an_envelope_round_trips_through_its_bytes(envelope: EventEnvelope) -> None:
    decoded = EventEnvelope.parse(bytes(envelope))
    assert fields(decoded) == fields(envelope)
    assert bytes(decoded) == bytes(envelope)


class DlqRecorder:
    """Stands in for the producer: records what the consumer dead-letters (no broker needed)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, dict[str, bytes]]] = []

    async def send_and_wait(self, topic: str, value: Any, key: Any = None, headers: Any = ()):
        self.sent.append((topic, value, dict(headers)))


def record(value: bytes | None) -> ConsumerRecord:
    return ConsumerRecord(
        topic="orders.events",
        partition=0,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value or b""),
        headers=(),
    )


def handle(value: bytes | None) -> tuple[list[EventEnvelope], DlqRecorder]:
    handled: list[EventEnvelope] = []

    async def handler(envelope: EventEnvelope, _: ConsumerRecord) -> None:
        handled.append(envelope)

    dlq = DlqRecorder()
    consumer = EventConsumer(
        load({"AGORA_PROFILE": "test"}),
        ConsumerSpec("fuzz", ["orders.events"], handler),
        dlq,  # type: ignore[arg-type]
    )
    asyncio.run(consumer._handle(record(value)))
    return handled, dlq


@PROPERTY
@given(st.binary(max_size=300))
@example(b"")
@example(b"\x0a\xff\xff\xff\xff\x0f")  # a length far beyond the data
@example(b"\x0a\x02\xc3\x28")  # event_id that is not UTF-8
@example(b"\x28\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01")  # an 11-byte varint
@example(b"\x0f")  # wire type 7 does not exist
def test_random_bytes_are_handled_or_dead_lettered_never_raised(value: bytes) -> None:
    handled, dlq = handle(value)
    assert len(handled) + len(dlq.sent) == 1
    if dlq.sent:
        topic, sent, headers = dlq.sent[0]
        assert topic == "orders.events.dlq"
        assert sent == value
        assert headers["dlq-reason"]
        assert headers["dlq-offset"] == b"7"
    else:
        assert handled[0].event_id, "an envelope without an event id is poison"


def test_a_record_without_a_value_is_poison() -> None:
    handled, dlq = handle(None)
    assert not handled
    assert len(dlq.sent) == 1


@PROPERTY
@given(envelopes().filter(lambda e: bool(e.event_id)))
def test_a_valid_envelope_reaches_the_handler_whatever_its_trace_context(
    envelope: EventEnvelope,
) -> None:
    handled, dlq = handle(bytes(envelope))
    assert not dlq.sent
    assert fields(handled[0]) == fields(envelope)
