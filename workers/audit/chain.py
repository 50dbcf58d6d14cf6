"""Appending to the hash chain: one serialized writer, deduplicated by event id.

Every append locks the single chain-head row (`SELECT ... FOR UPDATE`) in its
transaction, so appends from any number of consumers or processes are serial:
each row's `prev_hash` is the hash of the row before it, and the chain's order
is the audit's own recording order (Kafka partitions interleave). A redelivered
event is found in `audit_entries` under the same lock and stored once.

`audit_entries` (migration 0004) holds each log row's sequence (primary key) and
event id (unique). The service cannot write it: a trigger on `audit_log` fills it
from every inserted row, so an event id is there only for a row the log holds,
and a second row for a sequence, or for an event id, is refused with its insert.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import asyncpg
from opentelemetry import metrics

from workers.audit.envelopes import Checked

log = logging.getLogger(__name__)
_meter = metrics.get_meter("agora.audit")
_appended = _meter.create_counter("agora_audit_appended", description="events added to the log")
_duplicates = _meter.create_counter(
    "agora_audit_duplicates", description="redelivered events recognised by id and not stored again"
)
_unknown_payload = _meter.create_counter(
    "agora_audit_unknown_payload_type",
    description="well-formed events recorded whose payload type this build does not know",
)
_anomalies = _meter.create_counter(
    "agora_audit_sequence_anomalies",
    description="events whose aggregate sequence has a gap or went backwards",
)

GENESIS_HASH = bytes(32)


def link_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    """hash = SHA-256(previous hash || canonical bytes)."""
    return hashlib.sha256(prev_hash + canonical).digest()


@dataclass(frozen=True)
class Incoming:
    """One event to append: the checked envelope, its bytes as received, its topic."""

    checked: Checked
    canonical: bytes
    topic: str


@dataclass(frozen=True)
class SequenceAnomaly:
    log_sequence: int
    producer: str
    aggregate_type: str
    aggregate_id: str
    kind: str  # "gap" (events missing before this one) or "reordered" (late or repeated)
    expected: int
    got: int
    trace_id: str = ""  # the event's: its log line goes in its trace


@dataclass(frozen=True)
class AppendResult:
    appended: int
    duplicates: int
    head_sequence: int
    head_hash: bytes
    anomalies: tuple[SequenceAnomaly, ...]
    # (event id, payload type) of the appended events whose payload type this build
    # does not know: counted once stored, not per delivery or retried append.
    unknown_payloads: tuple[tuple[str, str], ...] = ()
    # Each appended event's trace id, by event id: the log lines about one go in its trace.
    trace_ids: Mapping[str, str] = field(default_factory=dict)


AggregateKey = tuple[str, str, str]


def classify(log_sequence: int, key: AggregateKey, last: int, got: int) -> SequenceAnomaly | None:
    """Compare an aggregate's sequence with the last one seen (0: none yet)."""
    expected = last + 1
    if got == expected:
        return None
    kind = "gap" if got > expected else "reordered"
    return SequenceAnomaly(log_sequence, *key, kind=kind, expected=expected, got=got)


class ChainWriter:
    """Appends events to the log; safe to call from several processes at once."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    async def append(self, items: Sequence[Incoming]) -> AppendResult:
        async with self._pool.acquire() as conn, conn.transaction():
            result = await append_in(conn, items)
        report(result)  # after the commit: a rolled-back append reports nothing
        return result


def report(result: AppendResult) -> None:
    """Metrics, and a warning log line per event of an unknown payload type and per
    sequence anomaly, of a committed append."""
    _appended.add(result.appended)
    for event_id, payload_type in result.unknown_payloads:
        _unknown_payload.add(1, {"payload_type": payload_type})
        log.warning(
            "recorded an event of an unknown payload type",
            extra={
                "event_id": event_id,
                "payload_type": payload_type,
                "trace_id": result.trace_ids.get(event_id, ""),
            },
        )
    if result.duplicates:
        _duplicates.add(result.duplicates)
    for anomaly in result.anomalies:
        _anomalies.add(1, {"kind": anomaly.kind, "producer": anomaly.producer})
        log.warning(
            "aggregate sequence anomaly",
            extra={
                "kind": anomaly.kind,
                "producer": anomaly.producer,
                "aggregate_type": anomaly.aggregate_type,
                "aggregate_id": anomaly.aggregate_id,
                "expected": anomaly.expected,
                "got": anomaly.got,
                "log_sequence": anomaly.log_sequence,
                "trace_id": anomaly.trace_id,
            },
        )


async def append_in(conn: asyncpg.Connection, items: Sequence[Incoming]) -> AppendResult:
    """Append `items` in order inside the caller's transaction."""
    head = await conn.fetchrow(
        "SELECT log_sequence, hash FROM audit_chain_head WHERE singleton FOR UPDATE"
    )
    sequence, prev = int(head["log_sequence"]), bytes(head["hash"])
    ids = [item.checked.event_id for item in items]
    seen = {
        row["event_id"]
        for row in await conn.fetch(
            "SELECT event_id FROM audit_entries WHERE event_id = ANY($1::uuid[])", ids
        )
    }
    fresh: list[Incoming] = []
    for item in items:
        if item.checked.event_id not in seen:
            seen.add(item.checked.event_id)  # a duplicate inside the batch, too
            fresh.append(item)
    duplicates = len(items) - len(fresh)
    if not fresh:
        return AppendResult(0, duplicates, sequence, prev, ())

    keys = list(
        dict.fromkeys(
            (
                i.checked.envelope.producer,
                i.checked.envelope.aggregate_type,
                i.checked.envelope.aggregate_id,
            )
            for i in fresh
        )
    )
    last_seen: dict[AggregateKey, int] = {
        (r["producer"], r["aggregate_type"], r["aggregate_id"]): int(r["last_sequence"])
        for r in await conn.fetch(
            """
            SELECT h.producer, h.aggregate_type, h.aggregate_id, h.last_sequence
            FROM audit_aggregate_heads h
            JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(p, t, i)
              ON (h.producer, h.aggregate_type, h.aggregate_id) = (k.p, k.t, k.i)
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
        )
    }

    rows: list[tuple[object, ...]] = []
    anomalies: list[SequenceAnomaly] = []
    # The time the head's lock was won, not the transaction's start (now()): appends
    # are serialized by that lock, so recorded_at grows with log_sequence, and a row
    # never lands in an older month's partition than the row before it (retention
    # detaches whole months: such a row would be cut out of the middle of the chain).
    # Never before the head row's: a database clock stepped back (NTP) must not make an
    # intact row look rewritten to verification, which requires the order.
    recorded_at = await conn.fetchval(
        "SELECT greatest(clock_timestamp(),"
        " (SELECT max(recorded_at) FROM audit_log WHERE log_sequence = $1))",
        sequence,
    )
    for item in fresh:
        env = item.checked.envelope
        sequence += 1
        digest = link_hash(prev, item.canonical)
        key = (env.producer, env.aggregate_type, env.aggregate_id)
        anomaly = classify(sequence, key, last_seen.get(key, 0), env.sequence)
        if anomaly is not None:
            anomalies.append(replace(anomaly, trace_id=item.checked.trace_id))
        last_seen[key] = max(last_seen.get(key, 0), env.sequence)
        rows.append(
            (
                sequence,
                recorded_at,
                item.checked.event_id,
                env.event_type,
                env.payload_type,
                env.aggregate_type,
                env.aggregate_id,
                env.sequence,
                env.producer,
                env.occurred_at,
                item.checked.trace_id,
                env.workflow_id,
                env.run_id,
                item.topic,
                item.canonical,
                prev,
                digest,
            )
        )
        prev = digest

    # Its trigger records each row's sequence and event id in audit_entries.
    await conn.copy_records_to_table("audit_log", records=rows, columns=LOG_COLUMNS)
    await conn.execute(
        """
        INSERT INTO audit_aggregate_heads (producer, aggregate_type, aggregate_id, last_sequence)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
        ON CONFLICT (producer, aggregate_type, aggregate_id)
        DO UPDATE SET last_sequence = GREATEST(audit_aggregate_heads.last_sequence,
                                               excluded.last_sequence)
        """,
        [k[0] for k in last_seen],
        [k[1] for k in last_seen],
        [k[2] for k in last_seen],
        list(last_seen.values()),
    )
    if anomalies:
        await conn.executemany(
            """
            INSERT INTO audit_sequence_anomalies
                (log_sequence, producer, aggregate_type, aggregate_id, kind, expected, got)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """,
            [
                (
                    a.log_sequence,
                    a.producer,
                    a.aggregate_type,
                    a.aggregate_id,
                    a.kind,
                    a.expected,
                    a.got,
                )
                for a in anomalies
            ],
        )
    await conn.execute(
        "UPDATE audit_chain_head SET log_sequence = $1, hash = $2 WHERE singleton",
        sequence,
        prev,
    )
    unknown = tuple(
        (i.checked.envelope.event_id, i.checked.envelope.payload_type)
        for i in fresh
        if not i.checked.payload_known
    )
    traces = {i.checked.envelope.event_id: i.checked.trace_id for i in fresh}
    return AppendResult(len(rows), duplicates, sequence, prev, tuple(anomalies), unknown, traces)


LOG_COLUMNS = [
    "log_sequence",
    "recorded_at",
    "event_id",
    "event_type",
    "payload_type",
    "aggregate_type",
    "aggregate_id",
    "aggregate_sequence",
    "producer",
    "occurred_at",
    "trace_id",
    "workflow_id",
    "run_id",
    "topic",
    "canonical",
    "prev_hash",
    "hash",
]
