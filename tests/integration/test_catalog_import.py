"""Bulk import: a workflow that reports progress and survives its worker dying mid-import.

The catalog process is killed (SIGKILL, as a crash) while batches are being
written and started again; the import resumes from its history and the
upserts by sku make the re-run batch a no-op, so every product exists once,
at version 1.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from agora.config import Settings
from gateway.deps import Gateway
from tests.integration.catalogkit import CatalogApi, eventually, product_body
from tests.integration.conftest import Services
from tests.integration.gatewaykit import TokenMinter, problem, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]

PRODUCTS = 300
BATCH = 10


@pytest_asyncio.fixture(scope="module")
async def import_api(settings: Settings, services: Services) -> AsyncIterator[CatalogApi]:
    services("identity")
    services("catalog")
    minter = TokenMinter(settings)
    running: tuple[Gateway, TestClient]
    # Imports are the one large body; an operator raises the limit the same way.
    async with running_gateway(settings, minter, gateway_max_body_bytes=1 << 20) as running:
        yield CatalogApi(running[1], minter)


async def _status(api: CatalogApi, url: str) -> dict[str, Any]:
    response = await api.client.get(url, headers=api.admin)
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_import_survives_a_worker_restart_without_duplicates(
    import_api: CatalogApi, services: Services
) -> None:
    api = import_api
    prefix = f"IMP-{uuid.uuid4().hex[:6]}"
    products = [
        product_body(f"{prefix}-{i:04d}", title=f"Imported {i}", category="test/import")
        for i in range(PRODUCTS)
    ]
    products.append(product_body(f"{prefix}-bad", category="Not A Category!"))
    response = await api.client.post(
        "/v1/admin/products/import",
        json={"products": products[:PRODUCTS], "batch_size": BATCH},
        headers=api.admin,
    )
    assert response.status == 202, await response.text()
    started = await response.json()
    url = started["status_url"]

    async def midway() -> dict[str, Any] | None:
        status = await _status(api, url)
        return status if status["processed"] >= 3 * BATCH else None

    status = await eventually(midway, what="the import to be under way")
    assert status["state"] in ("running", "completed")
    process = services("catalog")
    process.kill()
    services("catalog")  # a new worker picks the import up where its history stands

    async def completed() -> dict[str, Any] | None:
        response = await api.client.get(url, headers=api.admin)
        if response.status in (503, 504):
            return None  # the progress query waits for a worker while the new one starts
        assert response.status == 200, await response.text()
        status: dict[str, Any] = await response.json()
        return status if status["state"] == "completed" else None

    final = await eventually(completed, within_s=120, what="the import to complete")
    assert final["total"] == final["processed"] == PRODUCTS
    assert final["created"] + final["unchanged"] == PRODUCTS
    assert final["failed"] == 0

    for start in range(0, PRODUCTS, 100):
        skus = [p["sku"] for p in products[start : start + 100]]
        response = await api.client.get(
            "/v1/products", params=[("sku", s) for s in skus], headers=api.read
        )
        found = (await response.json())["products"]
        assert sorted(p["sku"] for p in found) == sorted(skus)
        assert {p["version"] for p in found} == {1}


async def test_an_import_reports_rejected_rows_and_imports_the_rest(import_api: CatalogApi) -> None:
    api = import_api
    good = product_body()
    bad = product_body(price={"amount_minor": 5, "currency": "EUR"}, title="   ")
    response = await api.client.post(
        "/v1/admin/products/import", json={"products": [good, bad]}, headers=api.admin
    )
    # The schema refuses a blank title before anything starts.
    await problem(response, 422, "validation-failed")

    response = await api.client.post(
        "/v1/admin/products/import", json={"products": [good]}, headers=api.admin
    )
    url = (await response.json())["status_url"]

    async def completed() -> dict[str, Any] | None:
        status = await _status(api, url)
        return status if status["state"] == "completed" else None

    assert (await eventually(completed))["created"] == 1
    await problem(
        await api.client.get("/v1/admin/imports/no-such-import", headers=api.admin),
        404,
        "not-found",
    )


async def test_an_import_retried_after_it_completed_does_not_run_again(
    import_api: CatalogApi,
) -> None:
    # A client that lost the 202 retries with its key after the import finished: the
    # import is not run again (it would overwrite an edit made since).
    api = import_api
    sku = f"IMP-{uuid.uuid4().hex[:10]}"
    body = {"products": [product_body(sku=sku, title="Imported lamp")]}
    headers = {**api.admin, "Idempotency-Key": f"import-{uuid.uuid4()}"}
    response = await api.client.post("/v1/admin/products/import", json=body, headers=headers)
    assert response.status == 202, await response.text()
    url = (await response.json())["status_url"]

    async def completed() -> dict[str, Any] | None:
        status = await _status(api, url)
        return status if status["state"] == "completed" else None

    await eventually(completed)
    edited = await api.set_price(sku, 4321)
    again = await api.client.post("/v1/admin/products/import", json=body, headers=headers)
    assert again.status == 202, await again.text()
    assert (await again.json())["status_url"] == url
    await eventually(completed)  # (a run started anew would have overwritten the edit)
    product = await api.get(sku)
    assert (product["version"], product["price"]["amount_minor"]) == (edited["version"], 4321)
    # The same key with other products is refused, not joined.
    other = {"products": [product_body(sku=sku, title="Another lamp")]}
    reused = await api.client.post("/v1/admin/products/import", json=other, headers=headers)
    await problem(reused, 409, "conflict")
