"""Audit's gRPC API: queries, verification, export, the public key, the latest checkpoint.

Reads only; the log is written by the consumer (consumer.py) and checkpoints by
the scheduled workflow. Domain errors become gRPC statuses in agora.grpc.
"""

from __future__ import annotations

import asyncpg
import betterproto2
from temporalio.client import Client

from contracts.agora.audit.v1 import (
    AggregateRef,
    AuditRecord,
    AuditServiceBase,
    Checkpoint,
    ExportAggregateRequest,
    ExportAggregateResponse,
    ExportedEvent,
    ExportOrderRequest,
    GetLatestCheckpointRequest,
    GetLatestCheckpointResponse,
    GetPublicKeyRequest,
    GetPublicKeyResponse,
    QueryEventsRequest,
    QueryEventsResponse,
    VerifyChainRequest,
    VerifyChainResponse,
    WorkflowHistory,
)
from contracts.agora.common.v1 import PageInfo
from contracts.agora.events.v1 import EventEnvelope
from workers.audit import checkpoints, export, queries
from workers.audit.checkpoints import StoredCheckpoint
from workers.audit.errors import InvalidQuery
from workers.audit.signing import TrustedKeys
from workers.audit.verification import verify_chain

MAX_EXPORT_WORKFLOWS = 50
# The aggregate type the orders service records an order's events under.
ORDER_AGGREGATE = "order"


def record_of(row: asyncpg.Record) -> AuditRecord:
    try:
        event = EventEnvelope.parse(bytes(row["canonical"]))
    except Exception:
        # Unparseable only if tampered with; verification names such a row.
        event = EventEnvelope(
            aggregate_type=row["aggregate_type"], aggregate_id=row["aggregate_id"]
        )
    return AuditRecord(
        log_sequence=int(row["log_sequence"]),
        recorded_at=row["recorded_at"],
        event=event,
        trace_id=row["trace_id"],
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
        topic=row["topic"],
        canonical=bytes(row["canonical"]),
    )


def checkpoint_message(checkpoint: StoredCheckpoint | None) -> Checkpoint | None:
    if checkpoint is None:
        return None
    return Checkpoint(
        log_sequence=checkpoint.log_sequence,
        head_hash=checkpoint.head_hash,
        signed_at=checkpoint.signed_at,
        key_id=checkpoint.key_id,
        signature=checkpoint.signature,
    )


class AuditApi(AuditServiceBase):
    """`keys`: the current signing key (published) and the retired ones verification trusts."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keys: TrustedKeys,
        temporal: Client,
        *,
        namespace: str,
        ui_base: str,
    ):
        self.pool = pool
        self.keys = keys
        self.temporal = temporal
        self.namespace = namespace
        self.ui_base = ui_base

    async def query_events(self, message: QueryEventsRequest) -> QueryEventsResponse:
        kind, _ = betterproto2.which_one_of(message, "selector")
        aggregate = message.aggregate if kind == "aggregate" else None
        query = queries.EventQuery(
            aggregate_type=aggregate.aggregate_type if aggregate else "",
            aggregate_id=aggregate.aggregate_id if aggregate else "",
            trace_id=message.trace_id or "" if kind == "trace_id" else "",
            workflow_id=message.workflow_id or "" if kind == "workflow_id" else "",
            start_time=message.start_time,
            end_time=message.end_time,
            page_size=message.page.page_size if message.page else 0,
            cursor=message.page.cursor if message.page else "",
        )
        if aggregate is not None and not (aggregate.aggregate_type and aggregate.aggregate_id):
            raise InvalidQuery("an aggregate needs both its type and its id")
        page = await queries.query_events(self.pool, query)
        return QueryEventsResponse(
            records=[record_of(row) for row in page.rows],
            page=PageInfo(next_cursor=page.next_cursor, has_more=bool(page.next_cursor)),
        )

    async def verify_chain(self, message: VerifyChainRequest) -> VerifyChainResponse:
        if message.to_sequence < 0:
            raise InvalidQuery("to_sequence must not be negative")
        result = await verify_chain(
            self.pool,
            self.keys,
            from_genesis=message.from_genesis,
            to_sequence=message.to_sequence,
        )
        return VerifyChainResponse(
            ok=result.ok,
            start_checkpoint=checkpoint_message(result.start_checkpoint),
            first_sequence=result.first_sequence,
            last_sequence=result.last_sequence,
            records_checked=result.records_checked,
            first_bad_sequence=result.first_bad_sequence,
            failure=result.failure,
            checkpoints_checked=result.checkpoints_checked,
            head_hash=result.head_hash,
        )

    async def export_order(self, message: ExportOrderRequest) -> ExportAggregateResponse:
        if not message.order_id:
            raise InvalidQuery("order_id is required")
        return await self.export_aggregate(
            ExportAggregateRequest(
                aggregate=AggregateRef(
                    aggregate_type=ORDER_AGGREGATE, aggregate_id=message.order_id
                )
            )
        )

    async def export_aggregate(self, message: ExportAggregateRequest) -> ExportAggregateResponse:
        ref = message.aggregate
        if ref is None or not ref.aggregate_type or not ref.aggregate_id:
            raise InvalidQuery("an aggregate needs both its type and its id")
        trail = await queries.events_of_trail(self.pool, ref.aggregate_type, ref.aggregate_id)
        runs = list(
            dict.fromkeys(
                (row["workflow_id"], row["run_id"]) for row in trail.rows if row["workflow_id"]
            )
        )
        histories = {
            run: await export.fetch_history(self.temporal, *run)
            for run in runs[:MAX_EXPORT_WORKFLOWS]
        }
        events = []
        for row in trail.rows:
            linked = None
            fetched = histories.get((row["workflow_id"], row["run_id"]))
            if fetched is not None:
                linked = export.link(fetched.activities, row["producer"], row["occurred_at"])
            events.append(
                ExportedEvent(
                    record=record_of(row),
                    workflow_event_id=linked.completed_event_id if linked else 0,
                    activity_type=linked.activity_type if linked else "",
                )
            )
        return ExportAggregateResponse(
            aggregate=AggregateRef(
                aggregate_type=ref.aggregate_type, aggregate_id=ref.aggregate_id
            ),
            events=events,
            workflows=[
                WorkflowHistory(
                    workflow_id=h.workflow_id,
                    run_id=h.run_id,
                    workflow_type=h.workflow_type,
                    ui_url=export.ui_url(self.ui_base, self.namespace, h.workflow_id, h.run_id),
                    history_json=h.history_json,
                    error=h.error,
                )
                for h in histories.values()
            ],
            truncated=trail.truncated or len(runs) > MAX_EXPORT_WORKFLOWS,
        )

    async def get_public_key(self, message: GetPublicKeyRequest) -> GetPublicKeyResponse:
        current = self.keys.current
        return GetPublicKeyResponse(
            key_id=current.key_id,
            algorithm="Ed25519",
            public_key=current.raw,
            public_key_pem=current.pem,
        )

    async def get_latest_checkpoint(
        self, message: GetLatestCheckpointRequest
    ) -> GetLatestCheckpointResponse:
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            head = await conn.fetchval("SELECT log_sequence FROM audit_chain_head")
            latest = await checkpoints.latest_verified(conn, self.keys, at_most=head)
        return GetLatestCheckpointResponse(checkpoint=checkpoint_message(latest))
