"""A crash in a gRPC handler is logged inside its span, so `make logs TRACE=<id>` shows it.

grpclib logs an unexpected exception ("Application error") once the handler has
returned, after our server span has closed: that line had an empty trace_id.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
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


async def test_a_file_not_found_in_a_handler_is_a_crash_not_a_store_away(
    log_lines: io.StringIO,
) -> None:
    # An OSError, but no connection's: a bug, answered UNKNOWN with its traceback.
    async def missing() -> None:
        raise FileNotFoundError("/var/run/agora/codec/codec-keys.json")

    async with serving(StoreDown(missing)) as channel:
        with pytest.raises(GRPCError) as failed:
            await IdentityServiceStub(channel).get_jwks(GetJwksRequest(), timeout=30)
    assert failed.value.status == Status.UNKNOWN
    [crash] = [r for r in records(log_lines) if r["message"] == "gRPC handler failed"]
    assert "FileNotFoundError" in crash["exc_info"]


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


async def _redis_down() -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        await dead.exists("identity:revoked:jti:j")  # as Introspect's revocation check
    finally:
        await dead.aclose()


async def _postgres_down() -> None:
    await asyncpg.connect("postgresql://agora@127.0.0.1:1/identity", timeout=2)


async def _postgres_starting() -> None:
    raise asyncpg.CannotConnectNowError("the database system is starting up")


class StoreDown(IdentityServiceBase):
    def __init__(self, fail: Callable[[], Awaitable[None]]) -> None:
        self._fail = fail

    async def get_jwks(self, message: GetJwksRequest) -> GetJwksResponse:
        await self._fail()
        raise AssertionError("the store answered")


@pytest.mark.parametrize(
    "fail", [_redis_down, _postgres_down, _postgres_starting], ids=lambda f: f.__name__[1:]
)
async def test_a_store_that_cannot_be_reached_is_unavailable_not_a_crash(
    spans: InMemorySpanExporter, log_lines: io.StringIO, fail: Callable[[], Awaitable[None]]
) -> None:
    async with serving(StoreDown(fail)) as channel:
        with pytest.raises(GRPCError) as failed:
            await IdentityServiceStub(channel).get_jwks(GetJwksRequest(), timeout=30)
    # Callers retry UNAVAILABLE (the gateway answers 503); UNKNOWN was a crash (502).
    assert failed.value.status == Status.UNAVAILABLE
    assert failed.value.message == "a store the service needs is unavailable; retry"
    [logged] = [r for r in records(log_lines) if "store is unavailable" in r["message"]]
    assert logged["level"] == "WARNING"
    assert logged["method"] == "/agora.identity.v1.IdentityService/GetJwks"
    assert not [r for r in records(log_lines) if r["message"] == "gRPC handler failed"]
    [span] = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == Status.UNAVAILABLE.value
