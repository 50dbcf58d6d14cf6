"""A tiny workflow and activity for the dev-server test, alone so the sandbox can re-import it."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="test.shout")
async def shout(text: str) -> str:
    return text.upper()


@workflow.defn(name="TestShout")
class ShoutWorkflow:
    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(
            shout, text, start_to_close_timeout=timedelta(seconds=10)
        )
