"""Builds audit's parts from the shared runtime: the one place its pieces meet."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import asyncpg

from activities.audit import AuditActivities, ensure_partitions
from agora import process
from agora.service import Runtime, ServiceParts
from workers.audit import verification
from workers.audit.api import AuditApi
from workers.audit.chain import ChainWriter
from workers.audit.consumer import AuditConsumer
from workers.audit.schedule import ensure_checkpoint_schedule
from workers.audit.signing import load_signer, load_trusted_keys
from workflows.audit import SignCheckpointWorkflow


async def partitions_at_start(
    pool: asyncpg.Pool, *, patience_s: float = process.STARTUP_PATIENCE_S
) -> int:
    """The current months' partitions exist before the first append. Bounded like the
    scheduled activity: waiting on its lock behind a long reader (a verification), it
    would hold every append of the running processes queued behind it."""
    return await process.starting(
        "audit partitions",
        partial(ensure_partitions, pool),
        transient=(asyncpg.LockNotAvailableError,),
        patience_s=patience_s,
    )


async def build_parts(rt: Runtime) -> ServiceParts:
    settings = rt.settings
    signer = load_signer(settings)
    keys = load_trusted_keys(settings, signer)
    verification.count_failures_from_zero()
    await partitions_at_start(rt.pool)
    await ensure_checkpoint_schedule(
        rt.temporal,
        timedelta(seconds=settings.audit_checkpoint_interval_s),
        settings.task_queue("audit"),
    )
    activities = AuditActivities(rt.pool, signer, keys.retired)
    consumer = AuditConsumer(ChainWriter(rt.pool))
    return ServiceParts(
        grpc_handlers=[
            AuditApi(
                rt.pool,
                keys,
                rt.temporal,
                namespace=settings.temporal_namespace,
                ui_base=settings.temporal_ui_url,
            )
        ],
        activities=[activities.sign_checkpoint, activities.ensure_partitions],
        workflows=[SignCheckpointWorkflow],
        consumers=[consumer.spec()],
    )
