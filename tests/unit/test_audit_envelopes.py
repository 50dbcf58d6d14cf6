"""The audit log accepts every well-formed envelope; malformed ones are refused with a reason."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from aiokafka import ConsumerRecord
from google.protobuf.timestamp_pb2 import Timestamp

from agora.errors import PoisonMessage
from contracts import full_name
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.identity.v1 import AccountRegistered
from workers.audit.chain import ChainWriter
from workers.audit.consumer import AuditConsumer
from workers.audit.envelopes import MalformedEnvelope, check, trace_id_of

TRACE = "0af7651916cd43dd8448eb211c80319c"


def envelope(**overrides: object) -> EventEnvelope:
    payload = AccountRegistered(account_id="a-1", email="a@example.com")
    fields: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "identity.AccountRegistered",
        "aggregate_type": "account",
        "aggregate_id": "a-1",
        "sequence": 1,
        "occurred_at": dt.datetime.now(dt.UTC),
        "producer": "identity",
        "traceparent": f"00-{TRACE}-b7ad6b7169203331-01",
        "payload": bytes(payload),
        "payload_type": full_name(payload),
    }
    fields.update(overrides)
    return EventEnvelope(**fields)  # type: ignore[arg-type]


def test_an_outbox_envelope_is_accepted_with_its_trace_id() -> None:
    checked = check(envelope())
    assert checked.payload_known
    assert checked.trace_id == TRACE


def test_an_unknown_payload_type_is_still_recorded() -> None:
    checked = check(
        envelope(event_type="identity.FutureThing", payload_type="agora.identity.v9.FutureThing")
    )
    assert not checked.payload_known


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"event_id": "not-a-uuid"}, "not a UUID"),
        ({"event_id": "0C6F7A52-2D8E-4B8E-9D4A-5B7F3C1E9A20"}, "not a canonical UUID"),
        ({"event_id": "{0c6f7a52-2d8e-4b8e-9d4a-5b7f3c1e9a20}"}, "not a canonical UUID"),
        ({"aggregate_id": "order\x001"}, "aggregate_id holds a NUL"),
        ({"workflow_id": "order-1\x00"}, "workflow_id holds a NUL"),
        ({"aggregate_id": ""}, "aggregate_id is empty"),
        ({"sequence": 0}, "not positive"),
        # The next expected sequence (+1) would overflow a bigint in the anomaly check.
        ({"sequence": 2**63 - 1}, "sequence 9223372036854775807 is above"),
        ({"sequence": 2**62}, "is above"),
        # Longer than a btree entry holds: the indexed insert would fail on every retry.
        ({"aggregate_id": "a" * 3000}, "aggregate_id is longer than 512 bytes"),
        ({"aggregate_type": "é" * 257}, "aggregate_type is longer than 512 bytes"),
        ({"workflow_id": "w" * 513}, "workflow_id is longer"),
        ({"run_id": "r" * 513}, "run_id is longer"),
        ({"event_type": "identity." + "E" * 600}, "event_type is longer"),
        ({"producer": "p" * 513, "event_type": "p" * 513 + ".AccountRegistered"}, "producer is"),
        ({"occurred_at": None}, "occurred_at"),
        ({"event_type": "identity.Nonsense"}, "unknown event type"),
        ({"event_type": "catalog.AccountRegistered"}, "unknown event type"),
        ({"payload_type": "not a name"}, "not a proto name"),
    ],
)
def test_a_malformed_envelope_is_refused_with_the_reason(
    overrides: dict[str, object], reason: str
) -> None:
    with pytest.raises(MalformedEnvelope, match=reason):
        check(envelope(**overrides))


def test_the_largest_sequence_and_ids_the_log_can_index_are_accepted() -> None:
    check(envelope(sequence=2**62 - 1, aggregate_id="a" * 512, workflow_id="w" * 512))


def test_trace_id_comes_only_from_a_well_formed_traceparent() -> None:
    assert trace_id_of(f"00-{TRACE}-b7ad6b7169203331-01") == TRACE
    assert trace_id_of("") == ""
    assert trace_id_of("00-" + "0" * 32 + "-b7ad6b7169203331-01") == ""
    assert trace_id_of("garbage") == ""


def test_a_field_whose_parsers_disagree_is_refused_before_it_enters_the_log() -> None:
    # A second occurred_at holding only nanos: betterproto2 keeps the last copy,
    # the protobuf runtime (which verification reads with) merges the two. Stored
    # as betterproto2 read it, the row would fail every verification after it.
    good = envelope()
    later = Timestamp(nanos=7000).SerializeToString()
    canonical = bytes(good) + b"\x32" + bytes([len(later)]) + later
    with pytest.raises(MalformedEnvelope, match="occurred_at reads differently"):
        check(EventEnvelope.parse(canonical), canonical)
    assert check(good, bytes(good)).event_id == uuid.UUID(good.event_id)


async def test_a_field_of_the_wrong_type_is_poison_for_the_audit_consumer() -> None:
    canonical = bytes(envelope()) + b"\x20\x05"  # aggregate_id (a string) as a varint
    record = ConsumerRecord("identity.events", 0, 0, 0, 0, b"a-1", canonical, None, 0, 0, [])
    with pytest.raises(PoisonMessage, match="malformed event"):
        await AuditConsumer(ChainWriter(None)).handle_batch(  # type: ignore[arg-type]
            [(EventEnvelope.parse(canonical), record)]
        )
