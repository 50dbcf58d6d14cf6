"""Request and response bodies of the audit routes (see gateway/schemas.py for the conventions)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, ConfigDict, Field, StringConstraints

from gateway.schemas import Answer, Strict
from workers.audit.envelopes import MAX_ID_BYTES


def _recordable(value: str) -> str:
    """An id the audit's intake could have recorded: at most MAX_ID_BYTES of UTF-8
    (a cap below the intake's left longer recorded ids unqueryable)."""
    if len(value.encode()) > MAX_ID_BYTES:
        raise ValueError(f"longer than {MAX_ID_BYTES} bytes (UTF-8): no event has such an id")
    return value


Name = Annotated[str, StringConstraints(min_length=1), AfterValidator(_recordable)]


def _in_the_log_era(value: datetime) -> datetime:
    """A bound the audit service can take: 1970 to 9999 in UTC (0001-01-01T00:00+14:00
    is before year 1 in UTC and overflowed building the gRPC timestamp: a 500)."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range: 1970 to 9999 (UTC)") from None
    if not 1970 <= utc.year <= 9999:
        raise ValueError("time out of range: 1970 to 9999 (UTC)")
    return value


QueryTime = Annotated[AwareDatetime, AfterValidator(_in_the_log_era)]


class AuditEventsQuery(Strict):
    # Query strings are text: these fields accept "25" and ISO 8601 times.
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    aggregate_type: Name | None = None
    aggregate_id: Name | None = None
    trace_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    workflow_id: Name | None = None
    start: QueryTime | None = Field(default=None, description="Inclusive, on occurred_at")
    end: QueryTime | None = Field(default=None, description="Exclusive, on occurred_at")
    page_size: Annotated[int, Field(ge=1, le=500)] = 100
    cursor: Annotated[str, StringConstraints(max_length=512)] = ""


class VerifyQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    from_genesis: bool = False
    # The audit log's sequence is a PostgreSQL bigint (and int64 on the wire).
    to_sequence: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0


class AuditEvent(Answer):
    log_sequence: int
    recorded_at: datetime
    topic: str
    event_id: str
    event_type: str
    payload_type: str
    aggregate_type: str
    aggregate_id: str
    sequence: int = Field(description="Position within the aggregate")
    occurred_at: datetime | None
    producer: str
    trace_id: str
    workflow_id: str
    run_id: str
    payload: dict[str, Any] | None = Field(
        default=None, description="The decoded payload, when its type is known"
    )
    canonical: str = Field(description="Base64 of the envelope bytes the hash covers")
    prev_hash: str = Field(description="Hex")
    hash: str = Field(description="Hex: SHA-256(prev_hash || canonical)")


class AuditEventPage(Answer):
    events: list[AuditEvent]
    next_cursor: str | None = None


class CheckpointOut(Answer):
    log_sequence: int
    head_hash: str
    signed_at: datetime | None
    key_id: str
    signature: str = Field(description="Base64 Ed25519 signature (statement in docs/audit.md)")


class VerifyResponse(Answer):
    ok: bool
    first_sequence: int
    last_sequence: int
    records_checked: int
    first_bad_sequence: int | None = None
    failure: str | None = None
    checkpoints_checked: int
    head_hash: str
    start_checkpoint: CheckpointOut | None = None


class LatestCheckpointResponse(Answer):
    checkpoint: CheckpointOut | None = None


class PublicKeyResponse(Answer):
    key_id: str
    algorithm: str
    public_key: str = Field(description="Base64 of the raw 32-byte Ed25519 public key")
    public_key_pem: str


class ExportedAuditEvent(AuditEvent):
    workflow_event_id: int | None = Field(
        default=None, description="The Temporal history event that caused it, when found"
    )
    activity_type: str | None = None


class ExportedWorkflow(Answer):
    workflow_id: str
    run_id: str
    workflow_type: str
    ui_url: str
    history: dict[str, Any] | None = Field(default=None, description="Temporal's JSON history")
    error: str | None = None


class OrderExport(Answer):
    order_id: str
    events: list[ExportedAuditEvent]
    workflows: list[ExportedWorkflow]
    truncated: bool = Field(
        default=False,
        description="A cap left events or workflow runs out (the oldest are kept): docs/audit.md",
    )
