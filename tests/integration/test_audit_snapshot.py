"""Verifying the chain while events are appended: one snapshot, no false alarm."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from agora.config import Settings
from agora.db import create_pool
from tests.integration.auditkit import make_envelope
from tests.integration.conftest import Services
from tests.integration.consumerkit import decoded
from workers.audit import checkpoints
from workers.audit.chain import ChainWriter
from workers.audit.consumer import AuditConsumer
from workers.audit.signing import load_signer
from workers.audit.verification import verify_chain

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(scope="module")
async def pool(settings: Settings, services: Services) -> AsyncIterator[asyncpg.Pool]:
    services("audit")  # its migrations and signing key
    pool = await create_pool(settings, "audit", size=4)
    yield pool
    await pool.close()


async def test_events_appended_during_a_verification_are_not_a_cut_off_tail(
    settings: Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = AuditConsumer(ChainWriter(pool))
    await consumer.handle_batch(decoded("identity.events", make_envelope()))
    latest = checkpoints.latest
    appended: list[str] = []

    async def latest_while_an_event_commits(*args: object, **kwargs: object) -> object:
        # Between the verification's read of the head and its look beyond it, an
        # append commits on another connection, as the consumer does under load.
        if not appended:
            late = make_envelope()
            await consumer.handle_batch(decoded("identity.events", late))
            appended.append(late.event_id)
        return await latest(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoints, "latest", latest_while_an_event_commits)
    result = await verify_chain(pool, load_signer(settings).public_key)
    assert appended, "the append landed during the verification"
    assert result.ok, result.failure
    committed = await pool.fetchval("SELECT log_sequence FROM audit_chain_head")
    assert result.last_sequence < committed, "verified the snapshot, not the later rows"
