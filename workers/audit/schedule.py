"""The Temporal Schedule that signs checkpoints, ensured at every audit start.

Created when missing, its interval updated when the configuration changed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from workflows.audit import CHECKPOINT_SCHEDULE_ID, SignCheckpointWorkflow

log = logging.getLogger(__name__)


def checkpoint_schedule(every: timedelta, task_queue: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SignCheckpointWorkflow.run, id=CHECKPOINT_SCHEDULE_ID, task_queue=task_queue
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_checkpoint_schedule(
    client: Client, every: timedelta, task_queue: str, *, schedule_id: str = CHECKPOINT_SCHEDULE_ID
) -> str:
    """Create or update the schedule; returns "created", "updated" or "unchanged"."""
    wanted = checkpoint_schedule(every, task_queue)
    handle = client.get_schedule_handle(schedule_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        try:
            await client.create_schedule(schedule_id, wanted)
        except ScheduleAlreadyRunningError:
            return "unchanged"
        log.info("audit checkpoints scheduled", extra={"every_s": every.total_seconds()})
        return "created"
    if [spec.every for spec in description.schedule.spec.intervals] == [every]:
        return "unchanged"

    def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=wanted)

    await handle.update(update)
    return "updated"
