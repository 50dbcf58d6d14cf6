"""The gateway's request span says ERROR when the gateway answered 5xx, and only then."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agora import config
from gateway import middleware
from gateway.deps import GATEWAY
from gateway.metrics import GatewayMetrics
from gateway.problems import Problem
from gateway.routing import RouteTable
from tests.unit.conftest import spans_of


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """The edge middleware's spans, kept in memory."""
    return spans_of(monkeypatch, middleware, "tracer")


async def crash(_: web.Request) -> web.Response:
    raise RuntimeError("handler bug")


async def unavailable(_: web.Request) -> web.Response:
    raise Problem("upstream-unavailable")


async def not_found(_: web.Request) -> web.Response:
    raise Problem("not-found")


async def ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.mark.parametrize(
    ("handler", "status", "span_status"),
    [
        (crash, 500, StatusCode.ERROR),
        (unavailable, 503, StatusCode.ERROR),
        (not_found, 404, StatusCode.UNSET),
        (ok, 200, StatusCode.UNSET),
    ],
)
async def test_the_request_span_is_an_error_only_for_a_5xx(
    spans: InMemorySpanExporter, handler: object, status: int, span_status: StatusCode
) -> None:
    app = web.Application(middlewares=[middleware.edge])
    app[GATEWAY] = SimpleNamespace(
        settings=config.load({"AGORA_PROFILE": "test"}),
        routes=RouteTable([]),
        metrics=GatewayMetrics(MeterProvider()),
    )
    app.router.add_get("/x", handler)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/x")
        assert response.status == status
    [span] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.status.status_code is span_status
    # The crash's exception is on the span, as gRPC's server spans have theirs.
    assert [e.name for e in span.events] == (["exception"] if handler is crash else [])
