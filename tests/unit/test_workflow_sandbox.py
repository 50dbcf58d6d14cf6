"""The sandbox workers run workflows in (agora.temporal.workflow_runner).

A redis connection pool imports redis.observability (and through it OpenTelemetry)
in its `__del__`. When the collector runs that finalizer on the workflow thread during
an activation, the import goes through the sandbox's importer: the sandbox re-imports
those modules for the run and warns "Module … was imported after initial workflow
load", 18 times in one test of a CI run.
"""

from __future__ import annotations

import gc
import uuid
import warnings

from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():  # the sandbox re-imports this module
    from redis.asyncio import Connection, ConnectionPool

    from agora.temporal import workflow_runner


@workflow.defn(sandboxed=True)
class CollectsGarbage:
    @workflow.run
    async def run(self) -> int:
        return gc.collect()


def _unreachable_pool_with_an_idle_connection() -> None:
    pool = ConnectionPool(connection_class=Connection)
    pool._available_connections.append(Connection())  # never connected: nothing to close
    pool.itself = pool  # a cycle: only the collector frees it


async def test_a_redis_pool_collected_during_an_activation_imports_nothing_into_it(
    env: WorkflowEnvironment,
) -> None:
    queue = f"sandbox-{uuid.uuid4()}"
    gc.collect()
    gc.disable()  # so that the pool is collected inside the workflow, not before it
    try:
        _unreachable_pool_with_an_idle_connection()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with Worker(
                env.client,
                task_queue=queue,
                workflows=[CollectsGarbage],
                workflow_runner=workflow_runner(),
            ):
                collected = await env.client.execute_workflow(
                    CollectsGarbage.run, id=f"wf-{uuid.uuid4()}", task_queue=queue
                )
    finally:
        gc.enable()
    assert collected > 0
    late = [str(w.message) for w in caught if "after initial workflow load" in str(w.message)]
    assert late == []
