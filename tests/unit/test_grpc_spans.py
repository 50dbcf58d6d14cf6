"""A gRPC server span is an ERROR only when the server failed, not the caller."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from grpclib import GRPCError
from grpclib.const import Status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agora import grpc


def stream() -> Any:
    return SimpleNamespace(peer=SimpleNamespace(cert=lambda: None), metadata={})


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (GRPCError(Status.NOT_FOUND, "no such product"), StatusCode.UNSET),
        (GRPCError(Status.INVALID_ARGUMENT, "bad sku"), StatusCode.UNSET),
        (GRPCError(Status.INTERNAL, "broke"), StatusCode.ERROR),
        (RuntimeError("bug"), StatusCode.ERROR),
    ],
)
async def test_the_span_status_follows_who_failed(
    spans: InMemorySpanExporter, raised: BaseException, status: StatusCode
) -> None:
    async def handler(_: Any) -> None:
        raise raised

    with pytest.raises(GRPCError):  # a crash too: the caller gets UNKNOWN
        await grpc._wrap(handler, "/agora.catalog.v1.CatalogService/GetProduct")(stream())
    [span] = spans.get_finished_spans()
    assert span.status.status_code == status
    if status == StatusCode.UNSET:
        # No exception event either: in Jaeger it reads as a failure.
        assert not span.events
