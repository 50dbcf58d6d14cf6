"""Nothing is lost: with Kafka stopped, or with the audit service down, every event arrives once.

Events here are identity's (accounts registered through the RegisterAccount
workflow); the same proof with orders placed comes with the order saga.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from temporalio.client import Client

from agora import temporal
from agora.config import Settings
from agora.db import create_pool
from agora.grpc import Channels
from contracts.agora.audit.v1 import AuditServiceStub, VerifyChainRequest
from tests.integration.auditkit import recorded
from tests.integration.conftest import Services
from tests.integration.holds import Hold
from tests.integration.waiting import eventually
from workflows.identity import (
    TASK_QUEUE,
    RegisterAccountInput,
    RegisterAccountWorkflow,
    register_workflow_id,
)

pytestmark = pytest.mark.integration
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
ACCOUNTS = 8


@pytest_asyncio.fixture(scope="module")
async def pools(settings: Settings, services: Services) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    services("identity")
    services("audit")
    pools = {name: await create_pool(settings, name, size=2) for name in ("audit", "identity")}
    yield pools
    for pool in pools.values():
        await pool.close()


async def register_accounts(settings: Settings, count: int) -> list[str]:
    client: Client = await temporal.connect(settings)
    ids = []
    for _ in range(count):
        email = f"recovery-{uuid.uuid4().hex[:10]}@example.com"
        account_id = str(uuid.uuid4())
        await client.execute_workflow(
            RegisterAccountWorkflow.run,
            RegisterAccountInput(account_id, email, "Recovery", HASH),
            id=register_workflow_id(email),
            task_queue=TASK_QUEUE,
        )
        ids.append(account_id)
    return ids


async def outbox_event_ids(identity: asyncpg.Pool, account_ids: list[str]) -> list[str]:
    rows = await identity.fetch(
        "SELECT event_id FROM outbox WHERE aggregate_type = 'account' AND aggregate_id = ANY($1)",
        account_ids,
    )
    return [str(r["event_id"]) for r in rows]


async def assert_each_once_and_chain_verifies(
    settings: Settings, audit: asyncpg.Pool, event_ids: list[str]
) -> None:
    await recorded(audit, *event_ids, within=120)
    counts = await audit.fetch(
        "SELECT event_id, count(*) AS n FROM audit_log WHERE event_id = ANY($1::uuid[])"
        " GROUP BY event_id",
        [uuid.UUID(e) for e in event_ids],
    )
    assert len(counts) == len(event_ids) and all(r["n"] == 1 for r in counts)
    channels = Channels(settings, caller="gateway")
    try:
        answer = await AuditServiceStub(channels.get("audit")).verify_chain(
            VerifyChainRequest(from_genesis=True), timeout=60
        )
    finally:
        channels.close()
    assert answer.ok, answer.failure


def stack(settings: Settings, command: str, component: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "stack", command, component],
        check=True,
        env={**os.environ, "AGORA_PROFILE": settings.profile},
        capture_output=True,
        timeout=240,
    )


async def test_events_written_while_kafka_is_down_reach_the_log_exactly_once(
    settings: Settings, pools: dict[str, asyncpg.Pool]
) -> None:
    stack(settings, "kill", "kafka")
    try:
        account_ids = await register_accounts(settings, ACCOUNTS)
        event_ids = await outbox_event_ids(pools["identity"], account_ids)
        assert len(event_ids) == ACCOUNTS
        unsent = await pools["identity"].fetchval(
            "SELECT count(*) FROM outbox WHERE event_id = ANY($1::uuid[]) AND sent_at IS NULL",
            [uuid.UUID(e) for e in event_ids],
        )
        assert unsent == ACCOUNTS  # accumulated in the outbox, nothing published
    finally:
        stack(settings, "up", "kafka")
    await assert_each_once_and_chain_verifies(settings, pools["audit"], event_ids)


async def published(identity: asyncpg.Pool, event_ids: list[str]) -> bool:
    """Identity's relay has sent every one of the events to Kafka."""
    unsent = await identity.fetchval(
        "SELECT count(*) FROM outbox WHERE event_id = ANY($1::uuid[]) AND sent_at IS NULL",
        [uuid.UUID(e) for e in event_ids],
    )
    return unsent == 0


async def entered(audit: asyncpg.Pool, event_ids: list[str]) -> int:
    """How many of the events the audit log holds."""
    count: int = await audit.fetchval(
        "SELECT count(*) FROM audit_entries WHERE event_id = ANY($1::uuid[])",
        [uuid.UUID(e) for e in event_ids],
    )
    return count


async def hold_chain_head(settings: Settings) -> Hold:
    """The chain head's row locked as an append locks it (workers/audit/chain.py): every
    append waits, its round fetched and not committed, until the hold is released."""
    return await Hold.statement(
        settings.db_dsn("audit"), "SELECT 1 FROM audit_chain_head WHERE singleton FOR UPDATE"
    )


async def appends_waiting(head: Hold) -> int:
    """Appends (not checkpoints, which take the head FOR SHARE) waiting for `head`."""
    count: int = await head.conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
        " AND query LIKE '%audit_chain_head%FOR UPDATE%'",
        head.conn.get_server_pid(),
    )
    return count


async def test_the_audit_service_killed_mid_consumption_catches_up_from_its_offsets(
    settings: Settings, services: Services, pools: dict[str, asyncpg.Pool]
) -> None:
    identity, audit = pools["identity"], pools["audit"]
    half = ACCOUNTS // 2
    appended = await outbox_event_ids(identity, await register_accounts(settings, half))
    await recorded(audit, *appended)  # consumed, and its offsets committed
    head = await hold_chain_head(settings)
    try:
        in_flight = await outbox_event_ids(
            identity, await register_accounts(settings, ACCOUNTS - half)
        )
        await eventually(lambda: published(identity, in_flight), what="identity's relay")
        await eventually(lambda: appends_waiting(head), what="audit to append, and wait")
        assert await entered(audit, in_flight) == 0
        # A crash mid-append: its round is neither recorded nor committed in Kafka.
        services("audit").kill()
    finally:
        await head.release()
    assert await entered(audit, in_flight) == 0, "the killed append recorded nothing"
    services("audit")  # restarts it
    await assert_each_once_and_chain_verifies(settings, audit, appended + in_flight)


async def test_orders_placed_while_kafka_is_down_reach_the_audit_log_exactly_once(
    settings: Settings, services: Services, pools: dict[str, asyncpg.Pool]
) -> None:
    """The saga does not need Kafka; its events wait in the outbox, then arrive once each."""
    from tests.integration.catalogkit import CatalogApi
    from tests.integration.gatewaykit import TokenMinter, bearer, running_gateway
    from tests.integration.test_orders import final_order, place, product_with_stock

    # identity too: the gateway takes its signing keys (and the minter's) from it.
    for service in ("identity", "catalog", "inventory", "payments", "orders"):
        services(service)
    minter = TokenMinter(settings)
    orders_db = await create_pool(settings, "orders", size=2)
    async with running_gateway(settings, minter) as (gw, client):
        shop = {"gw": gw, "client": client, "minter": minter, "catalog": CatalogApi(client, minter)}
        sku = await product_with_stock(shop, 5)
        who = bearer(
            minter.token(
                sub=str(uuid.uuid4()), scope="profile catalog:read orders:write orders:read"
            )
        )
        stack(settings, "kill", "kafka")
        try:
            order_ids = []
            for _ in range(3):
                response = await place(shop, who, sku)
                assert response.status == 201, await response.text()
                order_ids.append((await response.json())["order_id"])
            for order_id in order_ids:
                assert (await final_order(shop, who, order_id))["status"] == "COMPLETED"
            rows = await orders_db.fetch(
                "SELECT event_id, sent_at FROM outbox WHERE aggregate_id = ANY($1)", order_ids
            )
            assert len(rows) == 9  # placed, confirmed, completed for each
            assert all(r["sent_at"] is None for r in rows)  # accumulated, nothing published
        finally:
            stack(settings, "up", "kafka")
    await orders_db.close()
    await assert_each_once_and_chain_verifies(
        settings, pools["audit"], [str(r["event_id"]) for r in rows]
    )
