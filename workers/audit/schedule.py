"""The Temporal Schedule that signs checkpoints, ensured at every audit start."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client, Schedule

from agora.schedules import ensure_interval_schedule, interval_schedule
from workflows.audit import CHECKPOINT_SCHEDULE_ID, SignCheckpointWorkflow


def checkpoint_schedule(every: timedelta, task_queue: str) -> Schedule:
    return interval_schedule(SignCheckpointWorkflow.run, CHECKPOINT_SCHEDULE_ID, every, task_queue)


async def ensure_checkpoint_schedule(
    client: Client, every: timedelta, task_queue: str, *, schedule_id: str = CHECKPOINT_SCHEDULE_ID
) -> str:
    """Create or update the schedule; returns "created", "updated" or "unchanged"."""
    return await ensure_interval_schedule(
        client, schedule_id, checkpoint_schedule(every, task_queue), every
    )
