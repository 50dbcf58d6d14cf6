"""Temporal Schedules that a service ensures at every start (key rotation, checkpoints).

Idempotent across processes and restarts: created when missing, its interval
updated when the configuration changed (a pause an operator set is kept), left
alone otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

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

log = logging.getLogger(__name__)


def run_timeout(every: timedelta) -> timedelta:
    """How long one scheduled run may take: three intervals, ten minutes at least. A run
    still going when the next is due skips the next; without a bound, one whose step
    failed retryably for ever (each scheduled step retries without limit) stopped the
    schedule for good, with nothing failed anywhere."""
    return max(3 * every, timedelta(minutes=10))


def interval_schedule(
    run: Callable[[Any], Awaitable[Any]], workflow_id: str, every: timedelta, task_queue: str
) -> Schedule:
    """Start `run` every `every`; a run still going when the next is due skips the next,
    and a run is ended after `run_timeout(every)`."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            run,  # type: ignore[arg-type]
            id=workflow_id,  # the schedule appends the run's timestamp
            task_queue=task_queue,
            execution_timeout=run_timeout(every),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_interval_schedule(
    client: Client, schedule_id: str, wanted: Schedule, every: timedelta
) -> str:
    """Create or update the schedule; returns "created", "updated" or "unchanged"."""
    handle = client.get_schedule_handle(schedule_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        try:
            await client.create_schedule(schedule_id, wanted)
        except ScheduleAlreadyRunningError:
            return "unchanged"  # another process of the service created it first
        log.info(
            "schedule created", extra={"schedule": schedule_id, "every_s": every.total_seconds()}
        )
        return "created"
    action = description.schedule.action
    timeout = getattr(action, "execution_timeout", None)
    wanted_timeout = getattr(wanted.action, "execution_timeout", None)
    if [spec.every for spec in description.schedule.spec.intervals] == [every] and (
        timeout == wanted_timeout
    ):
        return "unchanged"

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        # An update replaces the whole schedule: keep its state (paused by an
        # operator, with their note), or a restart with a new interval resumes it.
        state = current.description.schedule.state
        return ScheduleUpdate(schedule=dataclasses.replace(wanted, state=state))

    await handle.update(update)
    log.info("schedule updated", extra={"schedule": schedule_id, "every_s": every.total_seconds()})
    return "updated"
