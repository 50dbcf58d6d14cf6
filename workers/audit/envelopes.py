"""What the audit log accepts: any well-formed envelope, checked here before it is recorded.

Decision (docs/audit.md): the log stores every *well-formed* envelope, including
one whose payload type this build's contracts do not know (a producer deployed
ahead of us must not lose its events from the audit trail); those are counted.
An envelope is malformed, and goes to the dead-letter topic, when an identity
field is missing or invalid, when its event type does not name its producer and
payload message, or when a payload of a known type does not parse.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from agora.kafka import parse_exact
from contracts import message_class
from contracts.agora.events.v1 import EventEnvelope
from workers.audit import fastparse

_FULL_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.[A-Z][A-Za-z0-9]*")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# Bounds past which PostgreSQL would refuse the row on every retry, stalling the whole
# intake: the next expected sequence (+1) must fit a bigint, and the indexed ids must fit
# a btree entry (2704 bytes for producer + aggregate type + id together).
MAX_SEQUENCE = 2**62 - 1
MAX_ID_BYTES = 512
_IDS = ("producer", "aggregate_type", "aggregate_id", "event_type", "workflow_id", "run_id")


class MalformedEnvelope(ValueError):
    """The envelope cannot be recorded as an event; the message says why."""


@dataclass(frozen=True)
class Checked:
    """A well-formed envelope and what the audit derives from it."""

    envelope: EventEnvelope
    event_id: uuid.UUID
    trace_id: str
    payload_known: bool


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C traceparent, "" when absent or not well-formed."""
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None or match.group(1) == "0" * 32:
        return ""
    return match.group(1)


def canonical_columns(canonical: bytes) -> dict[str, object]:
    """The indexed columns of an event as its canonical bytes say, read by the
    protobuf runtime's parser: what verification compares each stored row with."""
    env = fastparse.parse(canonical)
    return _columns(env, fastparse.occurred_at(env))


def _columns(env: Any, occurred_at: object) -> dict[str, object]:
    """The indexed columns of a parsed envelope, of either parser (the upb message and
    betterproto2's share field names; only the timestamp's type differs)."""
    return {
        "event_id": env.event_id,
        "event_type": env.event_type,
        "payload_type": env.payload_type,
        "aggregate_type": env.aggregate_type,
        "aggregate_id": env.aggregate_id,
        "aggregate_sequence": env.sequence,
        "producer": env.producer,
        "workflow_id": env.workflow_id,
        "run_id": env.run_id,
        "trace_id": trace_id_of(env.traceparent),
        "occurred_at": occurred_at,
    }


def check(envelope: EventEnvelope, canonical: bytes | None = None) -> Checked:
    """Raise MalformedEnvelope unless the envelope can be recorded.

    With its `canonical` bytes (what the log stores), the columns recorded from the
    envelope must be what verification will read from those bytes: the two parsers
    disagree on some encodings (a repeated `occurred_at` is merged by one, replaced
    by the other), and such a row, once appended, would fail every verification.
    """
    try:
        event_id = uuid.UUID(envelope.event_id)
    except ValueError:
        raise MalformedEnvelope(f"event_id {envelope.event_id[:64]!r} is not a UUID") from None
    if str(event_id) != envelope.event_id:
        # Verify compares the recorded id with its canonical form: an upper-case or
        # braced UUID recorded as sent would fail the chain for good at that row.
        raise MalformedEnvelope(f"event_id {envelope.event_id[:64]!r} is not a canonical UUID")
    for name in ("producer", "aggregate_type", "aggregate_id", "event_type", "payload_type"):
        if not getattr(envelope, name):
            raise MalformedEnvelope(f"{name} is empty")
    for name in _IDS:
        value = getattr(envelope, name)
        if "\x00" in value:
            # PostgreSQL text cannot hold NUL: retried, it would stop the whole intake.
            raise MalformedEnvelope(f"{name} holds a NUL character")
        if len(value.encode()) > MAX_ID_BYTES:
            raise MalformedEnvelope(f"{name} is longer than {MAX_ID_BYTES} bytes")
    if envelope.sequence < 1:
        raise MalformedEnvelope(f"sequence {envelope.sequence} is not positive")
    if envelope.sequence > MAX_SEQUENCE:
        raise MalformedEnvelope(f"sequence {envelope.sequence} is above {MAX_SEQUENCE}")
    if envelope.occurred_at is None:
        raise MalformedEnvelope("occurred_at is missing")
    if not _FULL_NAME.fullmatch(envelope.payload_type):
        raise MalformedEnvelope(f"payload_type {envelope.payload_type[:128]!r} is not a proto name")
    expected_type = f"{envelope.producer}.{envelope.payload_type.rpartition('.')[2]}"
    if envelope.event_type != expected_type:
        raise MalformedEnvelope(
            f"unknown event type {envelope.event_type[:128]!r}: expected {expected_type!r}"
            " (producer + payload message name)"
        )
    try:
        cls = message_class(envelope.payload_type)
    except KeyError:
        known = False
    else:
        known = True
        try:
            parse_exact(cls, envelope.payload)
        except Exception as error:
            raise MalformedEnvelope(
                f"payload is not a valid {envelope.payload_type}: {error}"
            ) from None
    if canonical is not None:
        try:
            derived = canonical_columns(canonical)
        except Exception as error:
            raise MalformedEnvelope(f"canonical bytes do not parse: {error}") from None
        recorded = _columns(envelope, envelope.occurred_at)
        for column, value in derived.items():
            if recorded[column] != value:
                raise MalformedEnvelope(f"{column} reads differently from its canonical bytes")
    return Checked(envelope, event_id, trace_id_of(envelope.traceparent), known)
