"""The gateway's wait for a workflow's result, against the real Temporal server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from agora import temporal
from agora.config import Settings
from gateway.upstream import RESULT_POLL, workflow_result
from tests.unit.test_gateway_result_polling import WaitsForGo

pytestmark = pytest.mark.integration


async def test_a_result_that_takes_several_polls_is_returned(settings: Settings) -> None:
    # A refund, a catalog write retrying its cache refresh, a registration: any
    # workflow the gateway waits on may take longer than one poll.
    client = await temporal.connect(settings, sdk_metrics=False)
    queue = f"test-polling-{uuid.uuid4()}"
    # Unsandboxed: the sandbox would re-import this test module to validate it.
    runner = UnsandboxedWorkflowRunner()
    async with Worker(client, task_queue=queue, workflows=[WaitsForGo], workflow_runner=runner):
        handle = await client.start_workflow(
            WaitsForGo.run, id=f"test-polling-{uuid.uuid4()}", task_queue=queue
        )
        waiting = asyncio.create_task(asyncio.wait_for(workflow_result(handle), timeout=30))
        await asyncio.sleep(RESULT_POLL.total_seconds() * 2.5)  # the wait spans polls
        assert not waiting.done(), waiting
        await handle.signal(WaitsForGo.proceed)
        assert await waiting == "done"
