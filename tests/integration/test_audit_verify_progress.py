"""A verification walk reports its progress chunk by chunk (the CLI logs it)."""

from __future__ import annotations

import os

import asyncpg
import pytest

from agora.config import Settings
from tests.integration.auditkit import make_envelope, scratch_database, scratch_dsn
from tests.integration.conftest import Services
from tests.integration.consumerkit import decoded
from workers.audit import verification
from workers.audit.chain import ChainWriter
from workers.audit.consumer import AuditConsumer
from workers.audit.signing import CheckpointSigner

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def roles(services: Services) -> None:
    services("audit")  # the stack's audit and audit_owner roles exist once it has started


async def test_a_walk_from_genesis_reports_each_chunk_with_the_sequence_it_reached(
    settings: Settings, roles: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verification, "CHUNK", 2)
    async with scratch_database(settings) as name:
        pool = await asyncpg.create_pool(scratch_dsn(settings, name), min_size=1, max_size=2)
        assert pool is not None
        try:
            consumer = AuditConsumer(ChainWriter(pool))
            await consumer.handle_batch(
                decoded("catalog.events", *(make_envelope() for _ in range(7)))
            )
            reports: list[tuple[int, int, int]] = []
            result = await verification.verify_chain(
                pool,
                CheckpointSigner(os.urandom(32)).public_key,
                from_genesis=True,
                progress=lambda *reached: reports.append(reached),
            )
        finally:
            await pool.close()
    assert result.ok, result.failure
    assert reports == [(2, 2, 7), (4, 4, 7), (6, 6, 7), (7, 7, 7)]
