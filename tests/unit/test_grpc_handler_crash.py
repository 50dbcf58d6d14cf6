"""A crash in a gRPC handler is logged inside its span, so `make logs TRACE=<id>` shows it.

grpclib logs an unexpected exception ("Application error") once the handler has
returned, after our server span has closed: that line had an empty trace_id.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpclib import GRPCError
from grpclib.const import Status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agora.logs import setup_logging
from contracts.agora.identity.v1 import (
    GetJwksRequest,
    GetJwksResponse,
    IdentityServiceBase,
    IdentityServiceStub,
)
from tests.unit.grpcserve import serving


class Broken(IdentityServiceBase):
    async def get_jwks(self, message: GetJwksRequest) -> GetJwksResponse:
        raise KeyError("kid-that-is-not-there")


@pytest.fixture
def log_lines(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("identity", "INFO")
    return stream


@pytest.fixture
async def stub() -> AsyncIterator[IdentityServiceStub]:
    async with serving(Broken()) as channel:
        yield IdentityServiceStub(channel)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_a_crash_is_one_log_record_with_the_spans_trace_id_and_its_traceback(
    spans: InMemorySpanExporter, log_lines: io.StringIO, stub: IdentityServiceStub
) -> None:
    with pytest.raises(GRPCError) as failed:
        await stub.get_jwks(GetJwksRequest(), timeout=30)
    assert failed.value.status == Status.UNKNOWN  # what grpclib itself sends for a crash
    [span] = spans.get_finished_spans()
    crashes = [r for r in records(log_lines) if "kid-that-is-not-there" in json.dumps(r)]
    assert len(crashes) == 1, records(log_lines)  # grpclib's "Application error" is not logged
    [crash] = crashes
    assert crash["message"] == "gRPC handler failed"
    assert (crash["service"], crash["level"]) == ("identity", "ERROR")
    assert crash["method"] == "/agora.identity.v1.IdentityService/GetJwks"
    assert crash["trace_id"] == format(span.context.trace_id, "032x")
    assert "Traceback" in crash["exc_info"] and "KeyError" in crash["exc_info"]


class TimedOut(IdentityServiceBase):
    async def get_jwks(self, message: GetJwksRequest) -> GetJwksResponse:
        raise TimeoutError  # as asyncpg raises a statement past the pool's command_timeout


async def test_a_query_past_its_timeout_is_deadline_exceeded_not_a_crash(
    spans: InMemorySpanExporter, log_lines: io.StringIO
) -> None:
    async with serving(TimedOut()) as channel:
        with pytest.raises(GRPCError) as failed:
            await IdentityServiceStub(channel).get_jwks(GetJwksRequest(), timeout=30)
    # The gateway answers it 504 upstream-timeout (a retry may pass), not 502.
    assert failed.value.status == Status.DEADLINE_EXCEEDED
    [logged] = [r for r in records(log_lines) if r["message"] == "gRPC handler timed out"]
    assert logged["level"] == "WARNING"
    assert logged["method"] == "/agora.identity.v1.IdentityService/GetJwks"
    assert not [r for r in records(log_lines) if r["message"] == "gRPC handler failed"]
