"""A process waiting for another's migrations says so while it waits, not once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest

from agora import db
from agora.config import Settings
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration
WAITING = "migrations: another process is applying them; waiting for its lock"


async def test_a_process_waiting_for_the_migration_lock_logs_how_long_and_who_holds_it(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "MIGRATION_LOCK_LOG_S", 0.5)  # 30 s in a real start
    await db.migrate(settings, "catalog")
    holder = await asyncpg.connect(settings.db_dsn("catalog"))

    async def three_waits() -> list[dict[str, Any]] | None:
        waits = [r.__dict__ for r in caplog.records if r.getMessage() == WAITING]
        return waits if len(waits) >= 3 else None

    try:
        await holder.execute("SELECT pg_advisory_lock($1)", db.MIGRATION_LOCK)
        with caplog.at_level(logging.INFO, logger="agora.db"):
            second = asyncio.create_task(db.migrate(settings, "catalog"))
            waits = await eventually(three_waits, within=60, what="three logged waits")
            await holder.execute("SELECT pg_advisory_unlock($1)", db.MIGRATION_LOCK)
            assert await second == 0
    finally:
        await holder.close()  # its lock with it, so a failed run's second process ends
    assert {w["holder_pid"] for w in waits} == {holder.get_server_pid()}
    waited = [w["waited_s"] for w in waits]
    assert waited == sorted(waited) and waited[-1] > waited[0], waited


async def test_a_migration_wait_cancelled_at_a_stop_lets_its_thread_end(
    settings: Settings,
) -> None:
    # A stop at start cancels the wait for the lock; its thread kept asking, and the
    # process, which waits for its threads at exit, waited for the lock too.
    await db.migrate(settings, "catalog")
    holder = await asyncpg.connect(settings.db_dsn("catalog"))

    async def askers() -> int:
        return await holder.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = 'catalog' AND query LIKE '%pg_try_advisory_lock%'"
            " AND pid <> pg_backend_pid()"
        )

    try:
        await holder.execute("SELECT pg_advisory_lock($1)", db.MIGRATION_LOCK)
        waiting = asyncio.create_task(db.migrate(settings, "catalog"))
        await eventually(askers, what="the second process asking for the lock")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await eventually(
            lambda: _none(askers), within=10, what="the cancelled wait's connection closed"
        )
    finally:
        await holder.close()


async def _none(count: Any) -> bool:
    return await count() == 0
