"""Audit's workflow: the periodic signed checkpoint of the chain head.

Run by the Temporal Schedule `audit-checkpoint` every
`AGORA_AUDIT_CHECKPOINT_INTERVAL_S`; it also makes the log's monthly partitions
ahead of time, so the same heartbeat keeps both the proof and the storage current.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.audit import (
        AuditActivities,
        PartitionsEnsured,
        SignCheckpointInput,
        SignedCheckpoint,
    )

__all__ = [
    "CHECKPOINT_SCHEDULE_ID",
    "TASK_QUEUE",
    "CheckpointReport",
    "SignCheckpointWorkflow",
]

TASK_QUEUE = "agora-audit"
CHECKPOINT_SCHEDULE_ID = "audit-checkpoint"
STEP_TIMEOUT = timedelta(seconds=30)


@dataclass
class CheckpointReport:
    checkpoint: SignedCheckpoint
    partitions: PartitionsEnsured


@workflow.defn(name="SignAuditCheckpoint")
class SignCheckpointWorkflow:
    @workflow.run
    async def run(self) -> CheckpointReport:
        partitions = await workflow.execute_activity_method(
            AuditActivities.ensure_partitions, start_to_close_timeout=STEP_TIMEOUT
        )
        info = workflow.info()
        checkpoint = await workflow.execute_activity_method(
            AuditActivities.sign_checkpoint,
            # A retried activity finds the checkpoint it already signed.
            SignCheckpointInput(idempotency_key=f"{info.workflow_id}/{info.run_id}"),
            start_to_close_timeout=STEP_TIMEOUT,
        )
        return CheckpointReport(checkpoint=checkpoint, partitions=partitions)
