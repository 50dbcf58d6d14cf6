"""A bare workflow of N no-op activities: the baseline of the orders scenario.

Alone in its module because the workflow sandbox re-imports it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="bench.noop")
async def noop(step: int) -> int:
    return step


@workflow.defn(name="BenchSteps")
class StepsWorkflow:
    @workflow.run
    async def run(self, steps: int) -> int:
        for step in range(steps):
            await workflow.execute_activity(noop, step, start_to_close_timeout=timedelta(seconds=5))
        return steps
