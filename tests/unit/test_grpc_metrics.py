"""The code a gRPC call is recorded with (rpc.server.duration's rpc_code) says who
failed: a handler the caller gave up on is CANCELLED, which the release analysis
does not count as a server error; a handler that broke is UNKNOWN, which it does."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from grpclib import GRPCError
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from agora import grpc

METHOD = "/agora.catalog.v1.CatalogService/GetProduct"
REPO = Path(__file__).resolve().parents[2]
DEFAULTS = REPO / "deploy" / "helm" / "agora-lib" / "templates" / "_defaults.tpl"


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    monkeypatch.setattr(grpc, "_server_duration", meter.create_histogram("rpc.server.duration"))
    return reader


def recorded_codes(reader: InMemoryMetricReader) -> list[str]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        str(point.attributes["rpc_code"])
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint) and point.attributes
    ]


def stream() -> Any:
    return SimpleNamespace(peer=SimpleNamespace(cert=lambda: None), metadata={})


def server_error_codes() -> str:
    """The rpc_code regex of the release analysis' errorSelector (the chart's default)."""
    match = re.search(r"""errorSelector: 'rpc_code=~"([^"]+)"'""", DEFAULTS.read_text())
    assert match, f"no errorSelector in {DEFAULTS}"
    return match.group(1)


async def test_a_handler_cancelled_by_its_caller_is_recorded_cancelled(reader) -> None:
    entered = asyncio.Event()

    async def handler(_: Any) -> None:
        entered.set()
        await asyncio.Event().wait()  # until grpclib cancels it (deadline, stream reset)

    call = asyncio.create_task(grpc._wrap(handler, METHOD)(stream()))
    await entered.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert recorded_codes(reader) == ["CANCELLED"]
    assert not re.fullmatch(server_error_codes(), "CANCELLED")


async def test_a_handler_that_breaks_is_recorded_as_a_server_error(reader) -> None:
    async def handler(_: Any) -> None:
        raise RuntimeError("bug")

    with pytest.raises(GRPCError):
        await grpc._wrap(handler, METHOD)(stream())
    assert recorded_codes(reader) == ["UNKNOWN"]
    assert re.fullmatch(server_error_codes(), "UNKNOWN")
