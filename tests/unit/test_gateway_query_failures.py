"""A workflow query that fails or is rejected, through `Upstream.call`: a problem the
client can act on (502, 409), not the edge's 500 internal-error. Against the
time-skipping Temporal server, whose real query answers raise the SDK's errors."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from temporalio import workflow
from temporalio.common import QueryRejectCondition
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from gateway.context import DEADLINE, TIMING, ServerTiming
from gateway.metrics import GatewayMetrics
from gateway.problems import Problem
from gateway.upstream import Upstream

TASK_QUEUE = "gateway-query-failures"


@workflow.defn(name="QueryHandlerBroken", sandboxed=False)
class QueryHandlerBroken:
    """Runs until signalled; its query handler always raises."""

    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._done)

    @workflow.signal
    def finish(self) -> None:
        self._done = True

    @workflow.query
    def progress(self) -> int:
        raise ValueError("the handler broke")


@pytest.fixture
async def temporal(env: WorkflowEnvironment) -> AsyncIterator[WorkflowEnvironment]:
    async with Worker(env.client, task_queue=TASK_QUEUE, workflows=[QueryHandlerBroken]):
        yield env


def a_request() -> web.Request:
    request = make_mocked_request("GET", "/v1/admin/imports/x")
    request[TIMING] = ServerTiming()
    request[DEADLINE] = time.monotonic() + 60
    return request


def upstream_of(env: WorkflowEnvironment) -> Upstream:
    return Upstream(SimpleNamespace(get=lambda _: None), env.client, GatewayMetrics())  # type: ignore[arg-type]


async def test_a_query_whose_handler_fails_answers_upstream_error(
    temporal: WorkflowEnvironment,
) -> None:
    handle = await temporal.client.start_workflow(
        QueryHandlerBroken.run, id=f"broken-{uuid.uuid4()}", task_queue=TASK_QUEUE
    )
    upstream = upstream_of(temporal)
    with pytest.raises(Problem) as refused:
        async with upstream.call(a_request(), "temporal.Progress") as timeout:
            await handle.query(QueryHandlerBroken.progress, rpc_timeout=timedelta(seconds=timeout))
    assert (refused.value.status, refused.value.code) == (502, "upstream-error")
    assert "handler broke" not in refused.value.detail  # the worker's message stays inside
    await handle.signal(QueryHandlerBroken.finish)


async def test_a_query_rejected_for_a_closed_workflow_answers_conflict(
    temporal: WorkflowEnvironment,
) -> None:
    handle = await temporal.client.start_workflow(
        QueryHandlerBroken.run, id=f"closed-{uuid.uuid4()}", task_queue=TASK_QUEUE
    )
    await handle.signal(QueryHandlerBroken.finish)
    await handle.result()
    upstream = upstream_of(temporal)
    with pytest.raises(Problem) as refused:
        async with upstream.call(a_request(), "temporal.Progress") as timeout:
            await handle.query(
                QueryHandlerBroken.progress,
                reject_condition=QueryRejectCondition.NOT_OPEN,
                rpc_timeout=timedelta(seconds=timeout),
            )
    assert (refused.value.status, refused.value.code) == (409, "conflict")
