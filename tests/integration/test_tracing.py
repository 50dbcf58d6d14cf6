"""Trace context crosses gRPC (metadata) and reaches the database spans of the callee."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from opentelemetry import trace

from agora.config import Settings
from agora.grpc import Channels
from agora.telemetry import setup_telemetry
from contracts.agora.identity.v1 import GetJwksRequest, IdentityServiceStub
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration


def jaeger_trace(settings: Settings, trace_id: str) -> list[dict]:
    url = f"http://{settings.host}:{settings.ports['jaeger_ui']}/api/traces/{trace_id}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except OSError:
        return []
    return [span for t in body.get("data") or [] for span in t["spans"]]


async def test_a_grpc_call_continues_the_callers_trace_down_to_its_sql(
    settings: Settings, identity_service
) -> None:
    telemetry = setup_telemetry(settings, "tracing-test")
    channels = Channels(settings, caller="gateway")
    tracer = trace.get_tracer("test")
    try:
        with tracer.start_as_current_span("caller") as caller:
            reply = await IdentityServiceStub(channels.get("identity")).get_jwks(
                GetJwksRequest(), timeout=5
            )
            trace_id = format(caller.get_span_context().trace_id, "032x")
            caller_span_id = format(caller.get_span_context().span_id, "016x")
        assert reply.keys, "identity published no signing key"
        telemetry.tracer_provider.force_flush(5_000)
    finally:
        channels.close()

    async def arrived() -> list[dict] | None:
        spans = await asyncio.to_thread(jaeger_trace, settings, trace_id)
        names = {s["operationName"] for s in spans}
        whole = "agora.identity.v1.IdentityService/GetJwks" in names and len(spans) >= 3
        return spans if whole else None

    spans = await eventually(arrived, within=30, what=f"trace {trace_id} in Jaeger")
    by_id = {s["spanID"]: s for s in spans}
    server = next(
        s for s in spans if s["operationName"] == "agora.identity.v1.IdentityService/GetJwks"
    )
    parent_ids = [r["spanID"] for r in server["references"] if r["refType"] == "CHILD_OF"]
    assert parent_ids == [caller_span_id], "the server span is not a child of the caller"
    sql = [
        s
        for s in spans
        if any(t["key"] == "db.system" for t in s["tags"]) and s["spanID"] != server["spanID"]
    ]
    assert sql, f"no database span in the trace: {sorted(s['operationName'] for s in spans)}"
    # Each database span descends from the server span.
    for span in sql:
        ancestor = span
        while ancestor["references"] and ancestor["spanID"] != server["spanID"]:
            ancestor = by_id.get(ancestor["references"][0]["spanID"], {"references": []})
        assert ancestor.get("spanID") == server["spanID"]
