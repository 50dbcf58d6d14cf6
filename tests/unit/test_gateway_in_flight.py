"""The gateway's in-flight gauge counts the requests being answered, and only those.

The gateway's autoscaler reads it besides CPU (deploy/helm/agora-lib/templates/
_autoscaling.tpl): a request it kept counted after an error or a cancellation would
keep pods running for good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from agora import config
from gateway import middleware
from gateway.deps import GATEWAY
from gateway.metrics import GatewayMetrics
from gateway.routing import RouteTable

METRIC = "gateway.requests.in_flight"


def in_flight(reader: InMemoryMetricReader) -> float:
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == METRIC
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)
    ]
    assert len(points) == 1, points
    return points[0]


async def until_in_flight(reader: InMemoryMetricReader, expected: float) -> None:
    """Poll: a cancelled handler's `finally` runs after the client has let go."""
    deadline = time.monotonic() + 5
    while in_flight(reader) != expected:
        assert time.monotonic() < deadline, f"in flight {in_flight(reader)}, want {expected}"
        await asyncio.sleep(0.01)


@dataclass
class Held:
    """A handler that holds each request until released, then answers or raises."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    fail: bool = False

    async def answer(self, _: web.Request) -> web.Response:
        self.entered.set()
        await self.release.wait()
        if self.fail:
            raise RuntimeError("handler bug")
        return web.Response(text="ok")


@dataclass
class Edge:
    client: TestClient[web.Request, web.Application]
    reader: InMemoryMetricReader
    held: Held


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    """The real edge middleware in front of a handler the test holds."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    held = Held()
    app = web.Application(middlewares=[middleware.edge])
    app[GATEWAY] = SimpleNamespace(  # type: ignore[assignment,misc]
        settings=config.load({"AGORA_PROFILE": "test"}),
        routes=RouteTable([]),
        metrics=GatewayMetrics(provider),
    )
    app.router.add_get("/held", held.answer)
    async with TestClient(TestServer(app)) as client:
        yield Edge(client, reader, held)
    provider.shutdown()


async def while_held(
    edge: Edge, request: Callable[[], Awaitable[int]]
) -> tuple[float, asyncio.Task[int]]:
    """Start `request`, and read the gauge once the handler holds it."""
    task = asyncio.ensure_future(request())
    async with asyncio.timeout(5):
        await edge.held.entered.wait()
    return in_flight(edge.reader), task


async def get_status(edge: Edge) -> int:
    async with edge.client.get("/held") as response:
        return response.status


async def test_a_request_is_counted_while_it_is_answered_and_not_after(edge: Edge) -> None:
    assert in_flight(edge.reader) == 0
    during, task = await while_held(edge, lambda: get_status(edge))
    assert during == 1
    edge.held.release.set()
    assert await task == 200
    await until_in_flight(edge.reader, 0)


async def test_a_request_whose_handler_raises_is_no_longer_counted(edge: Edge) -> None:
    edge.held.fail = True
    during, task = await while_held(edge, lambda: get_status(edge))
    assert during == 1
    edge.held.release.set()
    assert await task == 500
    await until_in_flight(edge.reader, 0)


async def test_a_request_whose_client_left_is_no_longer_counted(edge: Edge) -> None:
    # The test server cancels the handler of a closed connection.
    during, task = await while_held(edge, lambda: get_status(edge))
    assert during == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_in_flight(edge.reader, 0)
    assert not edge.held.release.is_set()  # the handler never finished on its own
