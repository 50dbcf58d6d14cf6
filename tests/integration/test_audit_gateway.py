"""The audit trail through the gateway: scopes, queries, verification, export, the key."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from agora import temporal
from agora.config import Settings
from agora.db import create_pool
from contracts.agora.orders.v1 import OrderPlaced
from tests.integration.auditkit import make_envelope, publish, recorded
from tests.integration.conftest import Services
from tests.integration.gatewaykit import TokenMinter, bearer, problem, running_gateway
from tests.integration.waiting import eventually
from workflows.identity import (
    TASK_QUEUE,
    RegisterAccountInput,
    RegisterAccountWorkflow,
    register_workflow_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


@pytest_asyncio.fixture(scope="module")
async def http(
    settings: Settings, services: Services, minter: TokenMinter
) -> AsyncIterator[TestClient]:
    services("identity")
    services("audit")
    async with running_gateway(settings, minter) as (_, client):
        yield client


@pytest_asyncio.fixture(scope="module")
async def pool(settings: Settings, http: TestClient) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings, "audit", size=2)
    yield pool
    await pool.close()


@pytest.fixture
def auditor(minter: TokenMinter) -> dict[str, str]:
    return bearer(minter.token(scope="profile audit:read"))


@pytest.fixture
def admin(minter: TokenMinter) -> dict[str, str]:
    return bearer(minter.token(scope="admin audit:read profile"))


async def test_an_auditor_reads_an_aggregate_in_order_and_a_customer_cannot(
    settings: Settings,
    http: TestClient,
    pool: asyncpg.Pool,
    auditor: dict[str, str],
    minter: TokenMinter,
) -> None:
    aggregate_id = f"gw-{uuid.uuid4().hex[:8]}"
    envelopes = [make_envelope(aggregate_id=aggregate_id, sequence=n) for n in (1, 2, 3)]
    await publish(settings, "identity.events", *(bytes(e) for e in envelopes))
    await recorded(pool, *(e.event_id for e in envelopes))
    query = {"aggregate_type": "account", "aggregate_id": aggregate_id, "page_size": "2"}
    first = await http.get("/v1/audit/events", params=query, headers=auditor)
    assert first.status == 200, await first.text()
    page = await first.json()
    assert [e["sequence"] for e in page["events"]] == [1, 2]
    assert page["events"][0]["payload"]["accountId"] == aggregate_id
    second = await http.get(
        "/v1/audit/events", params={**query, "cursor": page["next_cursor"]}, headers=auditor
    )
    rest = await second.json()
    assert [e["sequence"] for e in rest["events"]] == [3] and "next_cursor" not in rest

    customer = bearer(minter.token(scope="profile orders:read"))
    await problem(
        await http.get("/v1/audit/events", params=query, headers=customer),
        403,
        "insufficient-scope",
    )


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"page_size": "0"}, 422, "validation-failed"),
        ({"start": "yesterday"}, 422, "validation-failed"),
        ({"start": "2026-01-01T00:00:00"}, 422, "validation-failed"),  # no time zone
        ({"trace_id": "ABC"}, 422, "validation-failed"),
        ({"colour": "blue"}, 422, "validation-failed"),
        ({"aggregate_type": "account"}, 400, "invalid-argument"),
        ({"trace_id": "0" * 32, "workflow_id": "w"}, 400, "invalid-argument"),
        ({"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, 400, "invalid-argument"),
        ({"cursor": "forged"}, 400, "invalid-argument"),
    ],
)
async def test_bad_query_parameters_are_problems(
    http: TestClient, auditor: dict[str, str], params: dict[str, str], status: int, code: str
) -> None:
    await problem(await http.get("/v1/audit/events", params=params, headers=auditor), status, code)


async def test_verification_is_for_admins(
    http: TestClient, auditor: dict[str, str], admin: dict[str, str]
) -> None:
    await problem(await http.get("/v1/audit/verify", headers=auditor), 403, "insufficient-scope")
    answer = await http.get("/v1/audit/verify", params={"from_genesis": "true"}, headers=admin)
    assert answer.status == 200, await answer.text()
    body = await answer.json()
    assert body["ok"] is True and body["records_checked"] == body["last_sequence"]
    await problem(
        await http.get("/v1/audit/verify", params={"to_sequence": "-1"}, headers=admin),
        422,
        "validation-failed",
    )


async def test_the_public_key_is_published_to_anyone(http: TestClient) -> None:
    answer = await http.get("/v1/audit/public-key")
    assert answer.status == 200
    key = await answer.json()
    assert key["algorithm"] == "Ed25519" and key["public_key_pem"].startswith("-----BEGIN")


async def test_an_order_export_is_one_document_with_events_history_links_and_ui_url(
    settings: Settings, http: TestClient, pool: asyncpg.Pool, auditor: dict[str, str]
) -> None:
    # Until the order saga exists, a real workflow run (a registration) stands in for
    # the order's workflow: its event and an order event naming it make the trail.
    client = await temporal.connect(settings)
    email = f"export-{uuid.uuid4().hex[:10]}@example.com"
    account_id = str(uuid.uuid4())
    handle = await client.start_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(account_id, email, "Export", HASH),
        id=register_workflow_id(email),
        task_queue=TASK_QUEUE,
    )
    await handle.result()
    order_id = f"order-{uuid.uuid4().hex[:8]}"
    placed = make_envelope(
        producer="orders",
        aggregate_type="order",
        aggregate_id=order_id,
        payload=OrderPlaced(),
        workflow_id=handle.id,
        run_id=handle.result_run_id or "",
    )
    await publish(settings, "orders.events", bytes(placed))
    await recorded(pool, placed.event_id)

    async def account_recorded() -> bool:
        # identity's event comes through its outbox and another topic: maybe later.
        return bool(
            await pool.fetchval(
                "SELECT count(*) FROM audit_log"
                " WHERE aggregate_type = 'account' AND aggregate_id = $1",
                account_id,
            )
        )

    await eventually(account_recorded, within=60, what="the registration in the audit log")

    answer = await http.get(f"/v1/audit/orders/{order_id}/export", headers=auditor)
    assert answer.status == 200, await answer.text()
    document = await answer.json()
    assert (document["order_id"], document["truncated"]) == (order_id, False)
    kinds = {e["event_type"]: e for e in document["events"]}
    assert set(kinds) == {"identity.AccountRegistered", "orders.OrderPlaced"}
    registered = kinds["identity.AccountRegistered"]
    assert registered["activity_type"] == "identity.create_account"
    [flow] = document["workflows"]
    assert flow["workflow_id"] == handle.id and flow["workflow_type"] == "RegisterAccount"
    event_ids = {int(e["eventId"]) for e in flow["history"]["events"]}
    assert registered["workflow_event_id"] in event_ids
    assert flow["ui_url"].endswith(
        f"/workflows/{handle.id.replace('@', '%40')}/{flow['run_id']}/history"
    )

    await problem(
        await http.get("/v1/audit/orders/no-such-order/export", headers=auditor), 404, "not-found"
    )
