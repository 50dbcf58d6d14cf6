"""A workflow whose one activity rejects as a business rule does (out of stock), alone in
its module so the workflow sandbox can re-import it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from agora.temporal import business_rejections
    from workers.inventory.errors import OutOfStock, Shortage

attempts: list[int] = []


@activity.defn(name="test.reserve_out_of_stock")
async def reserve_out_of_stock() -> None:
    attempts.append(activity.info().attempt)
    with business_rejections():
        raise OutOfStock([Shortage(sku="SKU-1", requested=3, available=1)])


@workflow.defn(name="TestRejection")
class RejectionWorkflow:
    @workflow.run
    async def run(self) -> list[Any]:
        """What the workflow sees of the rejection: its type, non_retryable and details."""
        try:
            await workflow.execute_activity(
                reserve_out_of_stock,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=10)),
            )
        except ActivityError as error:
            cause = error.cause
            assert isinstance(cause, ApplicationError)
            return [cause.type, cause.non_retryable, list(cause.details)]
        return []
