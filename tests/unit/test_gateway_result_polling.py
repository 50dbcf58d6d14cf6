"""The gateway asks again when one poll for a workflow's result times out."""

from __future__ import annotations

import asyncio
import uuid

from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from gateway.upstream import RESULT_POLL, workflow_result


@workflow.defn(name="TestWaitsForGo")
class WaitsForGo:
    """Closes when told to (also used by tests/integration/test_result_polling.py)."""

    def __init__(self) -> None:
        self.go = False

    @workflow.signal
    def proceed(self) -> None:
        self.go = True

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self.go)
        return "done"


async def test_a_poll_that_the_client_times_out_is_asked_again(env: WorkflowEnvironment) -> None:
    # This server lets the SDK's client time the poll out (CANCELLED "Timeout expired")
    # rather than answering DEADLINE_EXCEEDED itself.
    queue = f"test-polling-{uuid.uuid4()}"
    runner = UnsandboxedWorkflowRunner()  # the sandbox would re-import this test module
    async with Worker(env.client, task_queue=queue, workflows=[WaitsForGo], workflow_runner=runner):
        handle = await env.client.start_workflow(
            WaitsForGo.run, id=f"test-polling-{uuid.uuid4()}", task_queue=queue
        )
        with env.auto_time_skipping_disabled():
            waiting = asyncio.create_task(asyncio.wait_for(workflow_result(handle), timeout=30))
            await asyncio.sleep(RESULT_POLL.total_seconds() * 2.5)  # the wait spans polls
            assert not waiting.done(), waiting
            await handle.signal(WaitsForGo.proceed)
            assert await waiting == "done"
