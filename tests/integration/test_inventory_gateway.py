"""The inventory routes through an in-process gateway: stock reads over gRPC, restocks
through the `Restock` workflow on inventory's task queue, and their refusals."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from activities.inventory import InventoryActivities, ReserveInput, SetStockInput, StockLine
from agora import db
from agora.config import Settings
from gateway.deps import Gateway
from tests.integration.conftest import ServiceProcess, Services
from tests.integration.gatewaykit import (
    TokenMinter,
    bearer,
    no_upstream_call,
    problem,
    running_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]


@pytest.fixture(scope="module")
def inventory_service(services: Services) -> ServiceProcess:
    services("identity")  # the gateway's keys
    return services("inventory")


@pytest.fixture(scope="module")
async def gateway(
    settings: Settings, inventory_service: ServiceProcess, minter: TokenMinter
) -> AsyncIterator[tuple[Gateway, TestClient]]:
    async with running_gateway(settings, minter) as running:
        yield running


@pytest.fixture(scope="module")
async def inventory(
    settings: Settings, inventory_service: ServiceProcess
) -> AsyncIterator[InventoryActivities]:
    pool: asyncpg.Pool = await db.create_pool(settings, "inventory", size=2)
    yield InventoryActivities(pool)
    await pool.close()


@pytest.fixture
def client(gateway: tuple[Gateway, TestClient]) -> TestClient:
    return gateway[1]


@pytest.fixture
def reader(minter: TokenMinter) -> dict[str, str]:
    return bearer(minter.token(scope="profile catalog:read"))


@pytest.fixture
def stock_admin(minter: TokenMinter) -> dict[str, str]:
    return bearer(minter.token(scope="catalog:read inventory:write"))


def new_sku() -> str:
    return f"GW-{uuid.uuid4().hex[:12].upper()}"


async def test_a_reader_sees_on_hand_reserved_and_available(
    client: TestClient, reader: dict[str, str], inventory: InventoryActivities
) -> None:
    sku = new_sku()
    await inventory.set_stock(SetStockInput(uuid.uuid4().hex, [StockLine(sku, 9)]))
    await inventory.reserve(ReserveInput(uuid.uuid4().hex, [StockLine(sku, 4)], 600))
    response = await client.get(f"/v1/inventory/{sku}", headers=reader)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert {k: body[k] for k in ("sku", "on_hand", "reserved", "available")} == {
        "sku": sku,
        "on_hand": 9,
        "reserved": 4,
        "available": 5,
    }
    assert body["version"] >= 2 and body["updated_at"]


async def test_an_unknown_sku_is_404(client: TestClient, reader: dict[str, str]) -> None:
    response = await client.get(f"/v1/inventory/{new_sku()}", headers=reader)
    await problem(response, 404, "not-found")


async def test_a_malformed_sku_is_400_without_calling_inventory(
    client: TestClient, gateway: tuple[Gateway, TestClient], reader: dict[str, str]
) -> None:
    with no_upstream_call(gateway[0]):
        response = await client.get("/v1/inventory/-bad%20sku", headers=reader)
        await problem(response, 400, "invalid-argument")


async def test_reading_stock_needs_the_catalog_read_scope(
    client: TestClient, minter: TokenMinter
) -> None:
    response = await client.get(
        f"/v1/inventory/{new_sku()}", headers=bearer(minter.token(scope="profile"))
    )
    await problem(response, 403, "insufficient-scope")


async def test_a_restock_with_an_idempotency_key_adds_its_quantity_once(
    client: TestClient, stock_admin: dict[str, str], reader: dict[str, str]
) -> None:
    sku, key = new_sku(), uuid.uuid4().hex
    headers = {**stock_admin, "Idempotency-Key": key}
    path = f"/v1/admin/inventory/{sku}/restock"
    first = await client.post(path, json={"quantity": 12}, headers=headers)
    assert first.status == 200, await first.text()
    retried = await client.post(path, json={"quantity": 12}, headers=headers)
    assert await retried.json() == await first.json()
    assert (await first.json())["stock"]["on_hand"] == 12
    level = await (await client.get(f"/v1/inventory/{sku}", headers=reader)).json()
    assert (level["on_hand"], level["available"]) == (12, 12)

    reused = await client.post(path, json={"quantity": 13}, headers=headers)
    await problem(reused, 409, "conflict")


async def test_two_callers_with_the_same_key_each_get_their_own_restock(
    client: TestClient, minter: TokenMinter, reader: dict[str, str]
) -> None:
    # Two integrations that number their receipts alike: the key is the caller's.
    sku, key = new_sku(), "receipt-00000042"
    path = f"/v1/admin/inventory/{sku}/restock"
    for _ in range(2):
        admin = bearer(minter.token(scope="catalog:read inventory:write"))
        answer = await client.post(
            path, json={"quantity": 5}, headers={**admin, "Idempotency-Key": key}
        )
        assert answer.status == 200, await answer.text()
    level = await (await client.get(f"/v1/inventory/{sku}", headers=reader)).json()
    assert level["on_hand"] == 10


async def test_retries_of_a_restock_in_flight_join_it_and_add_its_quantity_once(
    client: TestClient, stock_admin: dict[str, str], reader: dict[str, str]
) -> None:
    sku = new_sku()
    headers = {**stock_admin, "Idempotency-Key": uuid.uuid4().hex}
    path = f"/v1/admin/inventory/{sku}/restock"
    answers = await asyncio.gather(
        *(client.post(path, json={"quantity": 7}, headers=headers) for _ in range(4))
    )
    bodies = [await answer.json() for answer in answers]
    assert [answer.status for answer in answers] == [200] * 4, bodies
    assert all(body == bodies[0] for body in bodies)
    level = await (await client.get(f"/v1/inventory/{sku}", headers=reader)).json()
    assert level["on_hand"] == 7


@pytest.mark.parametrize("sku", ["SKU-1%0A", "a" * 300])
async def test_a_restock_of_a_sku_no_rule_allows_is_refused_before_anything_changes(
    client: TestClient, gateway: tuple[Gateway, TestClient], stock_admin: dict[str, str], sku: str
) -> None:
    with no_upstream_call(gateway[0]):
        response = await client.post(
            f"/v1/admin/inventory/{sku}/restock", json={"quantity": 1}, headers=stock_admin
        )
        await problem(response, 400, "invalid-argument")


@pytest.mark.parametrize("body", [{"quantity": 0}, {"quantity": -4}, {"quantity": "5"}, {}])
async def test_a_bad_quantity_is_refused_before_anything_changes(
    client: TestClient,
    gateway: tuple[Gateway, TestClient],
    stock_admin: dict[str, str],
    body: dict[str, object],
) -> None:
    with no_upstream_call(gateway[0]):
        response = await client.post(
            f"/v1/admin/inventory/{new_sku()}/restock", json=body, headers=stock_admin
        )
        await problem(response, 422, "validation-failed")


async def test_restocking_needs_the_inventory_write_scope(
    client: TestClient, reader: dict[str, str]
) -> None:
    response = await client.post(
        f"/v1/admin/inventory/{new_sku()}/restock", json={"quantity": 1}, headers=reader
    )
    await problem(response, 403, "insufficient-scope")
