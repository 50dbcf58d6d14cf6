"""The Temporal Schedule that rotates signing keys, ensured at every identity start."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, Schedule

from agora.schedules import ensure_interval_schedule, interval_schedule
from workflows.identity import ROTATION_SCHEDULE_ID, RotateSigningKeyWorkflow


def rotation_schedule(every: timedelta, task_queue: str) -> Schedule:
    # A rotation still running when the next is due makes the next one pointless.
    return interval_schedule(RotateSigningKeyWorkflow.run, ROTATION_SCHEDULE_ID, every, task_queue)


async def ensure_rotation_schedule(
    client: Client, every: timedelta, task_queue: str, *, schedule_id: str = ROTATION_SCHEDULE_ID
) -> str:
    """Create or update the schedule; returns "created", "updated" or "unchanged"."""
    return await ensure_interval_schedule(
        client, schedule_id, rotation_schedule(every, task_queue), every
    )
