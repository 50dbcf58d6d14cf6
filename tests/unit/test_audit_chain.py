"""The chain's arithmetic, checkpoint signatures, cursors and export linking, without a database."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json

import pytest
from opentelemetry.sdk.trace import TracerProvider

from agora.logs import setup_logging
from workers.audit.chain import (
    GENESIS_HASH,
    AppendResult,
    SequenceAnomaly,
    classify,
    link_hash,
    report,
)
from workers.audit.errors import InvalidQuery
from workers.audit.export import ActivityRun, link, ui_url
from workers.audit.queries import decode_cursor, encode_cursor
from workers.audit.signing import CheckpointSigner, PublicKey, statement

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def test_each_hash_covers_the_previous_hash_and_the_canonical_bytes() -> None:
    first = link_hash(GENESIS_HASH, b"event-1")
    assert first == hashlib.sha256(bytes(32) + b"event-1").digest()
    assert link_hash(first, b"event-2") != link_hash(GENESIS_HASH, b"event-2")


def test_aggregate_sequences_report_gaps_and_reordering() -> None:
    key = ("orders", "order", "o-1")
    assert classify(10, key, last=0, got=1) is None
    assert classify(11, key, last=1, got=2) is None
    gap = classify(12, key, last=2, got=5)
    assert gap is not None and (gap.kind, gap.expected, gap.got) == ("gap", 3, 5)
    late = classify(13, key, last=5, got=3)
    assert late is not None and (late.kind, late.expected, late.got) == ("reordered", 6, 3)


def test_a_checkpoint_signature_verifies_only_for_its_exact_statement() -> None:
    signer = CheckpointSigner(bytes(range(32)))
    signature = signer.sign(42, b"\x01" * 32, NOW)
    key = PublicKey.parse(signer.public_key.pem)
    assert key == signer.public_key
    assert key.verifies(signature, statement(42, b"\x01" * 32, NOW))
    assert not key.verifies(signature, statement(43, b"\x01" * 32, NOW))
    assert not key.verifies(signature, statement(42, b"\x02" * 32, NOW))
    other = CheckpointSigner(bytes(32)).public_key
    assert not other.verifies(signature, statement(42, b"\x01" * 32, NOW))


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    assert decode_cursor(encode_cursor(1234)) == 1234
    for bad in ("nope", "c2VxOmFiYw", "!!!"):
        with pytest.raises(InvalidQuery):
            decode_cursor(bad)


def test_an_event_links_to_the_producer_activity_running_when_it_occurred() -> None:
    second = dt.timedelta(seconds=1)
    runs = [
        ActivityRun("identity.create_account", NOW, NOW + second, 7),
        ActivityRun("catalog.create_product", NOW, NOW + second, 9),
        ActivityRun("identity.create_account", NOW + 10 * second, NOW + 11 * second, 15),
    ]
    linked = link(runs, "identity", NOW + second / 2)
    assert linked is not None and linked.completed_event_id == 7
    assert link(runs, "payments", NOW + second / 2) is None
    assert link(runs, "identity", NOW + 5 * second) is None


def test_ui_links_escape_the_workflow_id() -> None:
    assert (
        ui_url("http://h:1/", "default", "register-a@b.c", "r1")
        == "http://h:1/namespaces/default/workflows/register-a%40b.c/r1/history"
    )


def test_the_fast_envelope_parser_matches_the_contract() -> None:
    import uuid

    from contracts.agora.events.v1 import EventEnvelope
    from workers.audit import fastparse

    envelope = EventEnvelope(
        event_id=str(uuid.uuid4()),
        event_type="orders.OrderPlaced",
        aggregate_type="order",
        aggregate_id="o-1",
        sequence=7,
        occurred_at=NOW,
        producer="orders",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="k=v",
        workflow_id="w",
        run_id="r",
        payload=b"\x01\x02",
        payload_type="agora.orders.v1.OrderPlaced",
    )
    fast = fastparse.parse(bytes(envelope))
    for name, _, _ in fastparse.ENVELOPE_FIELDS:
        if name != "occurred_at":
            assert getattr(fast, name) == getattr(envelope, name), name
    assert fastparse.occurred_at(fast) == NOW
    assert fast.SerializeToString() == bytes(envelope)


def test_a_line_about_one_event_of_a_batch_is_in_that_events_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Logged inside the batch's span (its first event's trace), a warning about the
    # second event carried the first event's trace id: `make logs` missed it.
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("audit")
    theirs = "b" * 32
    anomaly = SequenceAnomaly(7, "orders", "order", "o-2", "gap", 2, 4, trace_id=theirs)
    result = AppendResult(
        2, 0, 7, b"", (anomaly,), (("e-2", "agora.orders.v9.New"),), {"e-2": theirs}
    )
    with TracerProvider().get_tracer("test").start_as_current_span("process orders.events"):
        report(result)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    warned = {line["message"]: line["trace_id"] for line in lines}
    assert warned == {
        "recorded an event of an unknown payload type": theirs,
        "aggregate sequence anomaly": theirs,
    }
