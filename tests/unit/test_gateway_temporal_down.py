"""Gateway reads of Temporal keep the request's deadline while Temporal is down.

A Temporal call's `rpc_timeout` bounds one attempt only: the client retries an
unavailable frontend with backoff for up to ~10 s. A status read that waited that
long would answer well after its client gave up, and hold a gateway request each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from agora.config import Settings
from gateway.context import DEADLINE, PRINCIPAL, TIMING, ServerTiming
from gateway.deps import GATEWAY
from gateway.metrics import GatewayMetrics
from gateway.problems import Problem
from gateway.routes import catalog as catalog_routes
from gateway.routes import orders as order_routes
from gateway.schemas_catalog import ImportProductsRequest
from gateway.tokens import Principal
from gateway.upstream import Upstream
from stack.temporal import temporal_cli

DEADLINE_S = 2.0  # the gateway's default request deadline
# Time past the deadline allowed for the answer to come back: a bound on how late
# the gateway may answer, well under the client's ~10 s of retries (without the
# deadline the calls take those), with room for a loaded two-core host.
SLACK_S = 4.0


@pytest_asyncio.fixture(scope="module")
async def unreachable_temporal() -> AsyncIterator[Client]:
    """A client connected to a dev server that has since shut down: every call meets
    an unavailable frontend, as while Temporal restarts."""
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), ui=False
    )
    await environment.shutdown()
    yield environment.client


def request_to(
    settings: Settings, temporal: Client, method: str, path: str, **match: str
) -> web.Request:
    upstream = Upstream(SimpleNamespace(get=lambda _: None), temporal, GatewayMetrics())  # type: ignore[arg-type]
    app = web.Application()
    app[GATEWAY] = SimpleNamespace(settings=settings, upstream=upstream)  # type: ignore[assignment,misc]
    request = make_mocked_request(method, path, app=app, match_info=match)
    request[PRINCIPAL] = Principal("cust-1", "account", frozenset(), "jti", "sid", 0, "kid")
    request[TIMING] = ServerTiming()
    request[DEADLINE] = time.monotonic() + DEADLINE_S
    return request


async def test_an_order_status_read_answers_the_projection_within_its_deadline(
    settings: Settings, unreachable_temporal: Client
) -> None:
    request = request_to(settings, unreachable_temporal, "GET", "/v1/orders/x")
    async with asyncio.timeout(DEADLINE_S + SLACK_S):
        view = await order_routes._saga_view(request, str(uuid.uuid4()))
    assert view is None  # the projection's answer stands


async def test_an_import_status_read_times_out_within_its_deadline(
    settings: Settings, unreachable_temporal: Client
) -> None:
    import_id = f"import-{uuid.uuid4()}"
    request = request_to(
        settings, unreachable_temporal, "GET", f"/v1/admin/imports/{import_id}", import_id=import_id
    )
    with pytest.raises(Problem) as failed:
        async with asyncio.timeout(DEADLINE_S + SLACK_S):
            await catalog_routes.import_status(request, None)
    assert failed.value.code == "upstream-timeout"


async def test_an_import_start_times_out_within_its_deadline(
    settings: Settings, unreachable_temporal: Client
) -> None:
    # The start, and the describe that checks a joined run's request, are retried by
    # the client as the reads are.
    body = ImportProductsRequest.model_validate_json(
        '{"products": [{"sku": "SKU-1", "title": "t", "category": "books",'
        ' "price": {"amount_minor": 100, "currency": "EUR"}}]}'
    )
    request = request_to(settings, unreachable_temporal, "POST", "/v1/admin/products/import")
    with pytest.raises(Problem) as failed:
        async with asyncio.timeout(DEADLINE_S + SLACK_S):
            await catalog_routes.start_import(request, body)
    assert failed.value.code == "upstream-timeout"
