"""The Temporal Schedule that rotates signing keys, ensured at every identity start.

Idempotent across processes and restarts: created when missing, its interval
updated when the configuration changed, left alone otherwise.
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

from workflows.identity import ROTATION_SCHEDULE_ID, RotateSigningKeyWorkflow

log = logging.getLogger(__name__)


def rotation_schedule(every: timedelta, task_queue: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RotateSigningKeyWorkflow.run,
            id=ROTATION_SCHEDULE_ID,  # the schedule appends the run's timestamp
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # A rotation still running when the next is due makes the next one pointless.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_rotation_schedule(
    client: Client,
    every: timedelta,
    task_queue: str,
    *,
    schedule_id: str = ROTATION_SCHEDULE_ID,
) -> str:
    """Create or update the schedule; returns what was done ("created", "updated", "unchanged")."""
    wanted = rotation_schedule(every, task_queue)
    handle = client.get_schedule_handle(schedule_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        try:
            await client.create_schedule(schedule_id, wanted)
        except ScheduleAlreadyRunningError:
            return "unchanged"  # another identity process created it first
        log.info("signing-key rotation scheduled", extra={"every_s": every.total_seconds()})
        return "created"
    current = [spec.every for spec in description.schedule.spec.intervals]
    if current == [every]:
        return "unchanged"

    def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=wanted)

    await handle.update(update)
    log.info("signing-key rotation rescheduled", extra={"every_s": every.total_seconds()})
    return "updated"
