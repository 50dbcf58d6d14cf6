"""Audit's workflow: the periodic signed checkpoint of the chain head.

Run by the Temporal Schedule `audit-checkpoint` every
`AGORA_AUDIT_CHECKPOINT_INTERVAL_S`; it also makes the log's monthly partitions
ahead of time, so the same heartbeat keeps both the proof and the storage current.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

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
# The checkpoint is signed before the partitions are made. Making them takes an ACCESS
# EXCLUSIVE lock on the log and gives up after 1 s behind a reader, retried without
# end: while long verifications or exports kept it waiting, no checkpoint was signed,
# though the partitions are made two months ahead and nothing urgent.
SIGN_FIRST_PATCH = "audit-checkpoint-signed-first"
# A signing that fails for good (a broken chain: AuditChainBroken, which pages) no
# longer skips the partitions: while the break was investigated no month was made,
# appends went to the default partition, and a month with rows there can no longer
# be made (PostgreSQL refuses the partition), so the next start of audit failed.
PARTITIONS_IF_UNSIGNED_PATCH = "audit-partitions-made-if-unsigned"
PARTITIONS_TIMEOUT = timedelta(minutes=2)


@dataclass
class CheckpointReport:
    checkpoint: SignedCheckpoint
    partitions: PartitionsEnsured


@workflow.defn(name="SignAuditCheckpoint")
class SignCheckpointWorkflow:
    @workflow.run
    async def run(self) -> CheckpointReport:
        if workflow.patched(SIGN_FIRST_PATCH):
            try:
                checkpoint = await self.sign()
            except ActivityError:
                if workflow.patched(PARTITIONS_IF_UNSIGNED_PATCH):
                    await self.ensure_partitions()
                raise
            partitions = await self.ensure_partitions()
        else:
            partitions = await self.ensure_partitions()
            checkpoint = await self.sign()
        return CheckpointReport(checkpoint=checkpoint, partitions=partitions)

    async def ensure_partitions(self) -> PartitionsEnsured:
        # Bounded: kept waiting behind the log's readers, it fails this run (the
        # checkpoint is signed already) instead of holding it, and with it the runs due
        # meanwhile (overlap skip), until the run's own timeout.
        return await workflow.execute_activity_method(
            AuditActivities.ensure_partitions,
            start_to_close_timeout=STEP_TIMEOUT,
            schedule_to_close_timeout=PARTITIONS_TIMEOUT,
        )

    async def sign(self) -> SignedCheckpoint:
        info = workflow.info()
        return await workflow.execute_activity_method(
            AuditActivities.sign_checkpoint,
            # A retried activity finds the checkpoint it already signed.
            SignCheckpointInput(idempotency_key=f"{info.workflow_id}/{info.run_id}"),
            start_to_close_timeout=STEP_TIMEOUT,
        )
