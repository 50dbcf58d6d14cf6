"""The audit trail: queries, verification, one order's export, the checkpoint key.

Reads only, over gRPC to the audit service. Reading needs `audit:read` (admins
and auditors); verifying the chain is an admin's (`admin` as well).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web

from agora import scopes
from contracts import message_class
from contracts.agora.audit.v1 import (
    AggregateRef,
    AuditRecord,
    Checkpoint,
    ExportOrderRequest,
    GetLatestCheckpointRequest,
    GetPublicKeyRequest,
    QueryEventsRequest,
    VerifyChainRequest,
)
from contracts.agora.common.v1 import PageRequest
from gateway.deps import deps
from gateway.problems import Problem
from gateway.routing import Route
from gateway.schemas_audit import (
    AuditEvent,
    AuditEventPage,
    AuditEventsQuery,
    CheckpointOut,
    ExportedAuditEvent,
    ExportedWorkflow,
    LatestCheckpointResponse,
    OrderExport,
    PublicKeyResponse,
    VerifyQuery,
    VerifyResponse,
)

READ = frozenset({scopes.AUDIT_READ})
VERIFY = frozenset({scopes.AUDIT_READ, scopes.ADMIN})


def _payload(type_name: str, raw: bytes) -> dict[str, Any] | None:
    try:
        decoded: dict[str, Any] = message_class(type_name).parse(raw).to_dict()
    except Exception:
        return None
    return decoded


def event_of(record: AuditRecord) -> dict[str, Any]:
    env = record.event
    if env is None:
        raise Problem("upstream-error", "audit answered a record without its event")
    return {
        "log_sequence": record.log_sequence,
        "recorded_at": record.recorded_at,
        "topic": record.topic,
        "event_id": env.event_id,
        "event_type": env.event_type,
        "payload_type": env.payload_type,
        "aggregate_type": env.aggregate_type,
        "aggregate_id": env.aggregate_id,
        "sequence": env.sequence,
        "occurred_at": env.occurred_at,
        "producer": env.producer,
        "trace_id": record.trace_id,
        "workflow_id": env.workflow_id,
        "run_id": env.run_id,
        "payload": _payload(env.payload_type, env.payload),
        # The bytes the hash covers, as audit stored them (an older audit service
        # sends none: the event re-encoded, equal for every betterproto2 producer).
        "canonical": base64.b64encode(record.canonical or bytes(env)).decode(),
        "prev_hash": record.prev_hash.hex(),
        "hash": record.hash.hex(),
    }


def checkpoint_out(checkpoint: Checkpoint | None) -> CheckpointOut | None:
    if checkpoint is None:
        return None
    return CheckpointOut(
        log_sequence=checkpoint.log_sequence,
        head_hash=checkpoint.head_hash.hex(),
        signed_at=checkpoint.signed_at,
        key_id=checkpoint.key_id,
        signature=base64.b64encode(checkpoint.signature).decode(),
    )


async def query_audit_events(request: web.Request, query: AuditEventsQuery) -> AuditEventPage:
    if bool(query.aggregate_type) != bool(query.aggregate_id):
        raise Problem("invalid-argument", "aggregate_type and aggregate_id go together")
    if sum(bool(s) for s in (query.aggregate_id, query.trace_id, query.workflow_id)) > 1:
        raise Problem("invalid-argument", "choose one of aggregate, trace_id or workflow_id")
    if query.start and query.end and query.start >= query.end:
        raise Problem("invalid-argument", "start must be before end")
    call = QueryEventsRequest(
        start_time=query.start,
        end_time=query.end,
        page=PageRequest(page_size=query.page_size, cursor=query.cursor),
    )
    if query.aggregate_type and query.aggregate_id:
        call.aggregate = AggregateRef(
            aggregate_type=query.aggregate_type, aggregate_id=query.aggregate_id
        )
    elif query.trace_id:
        call.trace_id = query.trace_id
    elif query.workflow_id:
        call.workflow_id = query.workflow_id
    gw = deps(request)
    async with gw.upstream.call(request, "audit.QueryEvents") as timeout:
        reply = await gw.upstream.audit.query_events(call, timeout=timeout)
    page = reply.page
    return AuditEventPage(
        events=[AuditEvent(**event_of(record)) for record in reply.records],
        next_cursor=page.next_cursor if page is not None and page.has_more else None,
    )


async def verify_audit_chain(request: web.Request, query: VerifyQuery) -> VerifyResponse:
    gw = deps(request)
    call = VerifyChainRequest(from_genesis=query.from_genesis, to_sequence=query.to_sequence)
    async with gw.upstream.call(request, "audit.VerifyChain") as timeout:
        reply = await gw.upstream.audit.verify_chain(call, timeout=timeout)
    return VerifyResponse(
        ok=reply.ok,
        first_sequence=reply.first_sequence,
        last_sequence=reply.last_sequence,
        records_checked=reply.records_checked,
        first_bad_sequence=reply.first_bad_sequence or None,
        failure=reply.failure or None,
        checkpoints_checked=reply.checkpoints_checked,
        head_hash=reply.head_hash.hex(),
        start_checkpoint=checkpoint_out(reply.start_checkpoint),
    )


async def export_order(request: web.Request, _: None) -> OrderExport:
    order_id = request.match_info["order_id"]
    if not 0 < len(order_id) <= 200:
        raise Problem("invalid-argument", "order id must be 1-200 characters")
    gw = deps(request)
    async with gw.upstream.call(request, "audit.ExportOrder") as timeout:
        reply = await gw.upstream.audit.export_order(
            ExportOrderRequest(order_id=order_id), timeout=timeout
        )
    if not reply.events:
        raise Problem("not-found", f"no audited events for order {order_id}")
    return OrderExport(
        order_id=order_id,
        events=[
            ExportedAuditEvent(
                **event_of(item.record) if item.record else {},
                workflow_event_id=item.workflow_event_id or None,
                activity_type=item.activity_type or None,
            )
            for item in reply.events
        ],
        workflows=[
            ExportedWorkflow(
                workflow_id=flow.workflow_id,
                run_id=flow.run_id,
                workflow_type=flow.workflow_type,
                ui_url=flow.ui_url,
                history=json.loads(flow.history_json) if flow.history_json else None,
                error=flow.error or None,
            )
            for flow in reply.workflows
        ],
        truncated=reply.truncated,
    )


async def audit_public_key(request: web.Request, _: None) -> PublicKeyResponse:
    gw = deps(request)
    async with gw.upstream.call(request, "audit.GetPublicKey") as timeout:
        reply = await gw.upstream.audit.get_public_key(GetPublicKeyRequest(), timeout=timeout)
    return PublicKeyResponse(
        key_id=reply.key_id,
        algorithm=reply.algorithm,
        public_key=base64.b64encode(reply.public_key).decode(),
        public_key_pem=reply.public_key_pem,
    )


async def latest_audit_checkpoint(request: web.Request, _: None) -> LatestCheckpointResponse:
    gw = deps(request)
    async with gw.upstream.call(request, "audit.GetLatestCheckpoint") as timeout:
        reply = await gw.upstream.audit.get_latest_checkpoint(
            GetLatestCheckpointRequest(), timeout=timeout
        )
    return LatestCheckpointResponse(checkpoint=checkpoint_out(reply.checkpoint))


ROUTES = [
    Route(
        "GET",
        "/v1/audit/events",
        query_audit_events,
        "Audited events by aggregate, trace or workflow and time range, in log order",
        "audit",
        auth=True,
        scopes=READ,
        route_class="read",
        query=AuditEventsQuery,
        response=AuditEventPage,
        problems=("invalid-argument",),
    ),
    Route(
        "GET",
        "/v1/audit/verify",
        verify_audit_chain,
        "Recompute the hash chain from the last signed checkpoint (or genesis)",
        "audit",
        auth=True,
        scopes=VERIFY,
        route_class="read",
        query=VerifyQuery,
        response=VerifyResponse,
        problems=("invalid-argument",),
    ),
    Route(
        "GET",
        "/v1/audit/orders/{order_id}/export",
        export_order,
        "One order's audited events and the Temporal history of its workflows",
        "audit",
        auth=True,
        scopes=READ,
        route_class="read",
        response=OrderExport,
        problems=("not-found", "invalid-argument"),
    ),
    Route(
        "GET",
        "/v1/audit/checkpoints/latest",
        latest_audit_checkpoint,
        "The most recent signed checkpoint of the chain head",
        "audit",
        auth=True,
        scopes=READ,
        route_class="read",
        response=LatestCheckpointResponse,
    ),
    Route(
        "GET",
        "/v1/audit/public-key",
        audit_public_key,
        "The Ed25519 public key audit checkpoints are signed with",
        "audit",
        route_class="read",
        response=PublicKeyResponse,
    ),
]
