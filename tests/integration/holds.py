"""Holding a step of the platform in flight, to crash a worker while it runs.

A `Hold` is a transaction of the test's own, kept open on a service's database,
holding a lock that the step under test must take (an advisory lock, a row).
The step's activity starts, waits for the lock and so stays in flight for as
long as the test wants: the test can see it waiting (`blocked`), kill the worker
that runs it and release the hold. Releasing rolls the test's transaction back,
so a hold never changes any data.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from agora.db import lock_for_transaction


class Hold:
    """An open transaction on one database that other sessions may have to wait for."""

    def __init__(self, conn: asyncpg.Connection, transaction: Any):
        self.conn = conn
        self.transaction = transaction

    @classmethod
    async def statement(cls, dsn: str, sql: str, *args: Any) -> Hold:
        """Run `sql` in a transaction left open (its locks held) until `release`."""
        conn = await asyncpg.connect(dsn)
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(sql, *args)
        except BaseException:
            await transaction.rollback()
            await conn.close()
            raise
        return cls(conn, transaction)

    @classmethod
    async def advisory(cls, dsn: str, name: str) -> Hold:
        """The transaction-scoped advisory lock the platform's code takes for `name`
        (agora.db.lock_for_transaction)."""
        conn = await asyncpg.connect(dsn)
        transaction = conn.transaction()
        await transaction.start()
        await lock_for_transaction(conn, name)
        return cls(conn, transaction)

    async def blocked(self) -> int:
        """How many other sessions wait for this hold right now."""
        count: int = await self.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            self.conn.get_server_pid(),
        )
        return count

    async def release(self) -> None:
        """Roll the hold back (idempotent): whatever waited for it goes on."""
        if self.conn.is_closed():
            return
        try:
            await self.transaction.rollback()
        finally:
            await self.conn.close()


def started_attempt(history: WorkflowHistory, activity: str | None = None, index: int = 0) -> int:
    """The attempt that ran last of an activity the workflow scheduled, from its
    ACTIVITY_TASK_STARTED: the one of type `activity` (which must be scheduled once),
    or else the `index`-th scheduled."""
    scheduled = [
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and activity in (None, e.activity_task_scheduled_event_attributes.activity_type.name)
    ]
    if activity is not None:
        assert len(scheduled) == 1, f"{activity} scheduled {len(scheduled)} times"
    started = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id == scheduled[index]
    ]
    assert len(started) == 1, f"{activity or 'activity'} #{index} started {len(started)} times"
    return started[0]
