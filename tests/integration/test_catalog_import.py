"""Bulk import: a workflow that reports progress and survives its worker dying mid-import.

The catalog process is killed (SIGKILL, as a crash) while batches are being
written and started again; the import resumes from its history and the
upserts by sku make the re-run batch a no-op, so every product exists once,
at version 1.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from agora.config import Settings
from gateway.deps import Gateway
from gateway.routes.catalog import MAX_WORKFLOW_INPUT_BYTES
from gateway.schemas_catalog import MAX_IMPORT, MAX_IMPORT_BODY_BYTES
from tests.integration.catalogkit import CatalogApi, product_body
from tests.integration.conftest import Services
from tests.integration.gatewaykit import TokenMinter, no_upstream_call, problem, running_gateway
from tests.integration.holds import Hold, started_attempt
from tests.integration.waiting import eventually
from workflows.catalog import (
    TASK_QUEUE,
    ImportInput,
    ImportProductsWorkflow,
    ProductData,
    caller_import_workflow_id,
    import_workflow_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]

PRODUCTS = 300
BATCH = 10
HELD_BATCH = 3


@pytest_asyncio.fixture(scope="module")
async def importing(
    settings: Settings, services: Services
) -> AsyncIterator[tuple[Gateway, CatalogApi]]:
    services("identity")
    services("catalog")
    minter = TokenMinter(settings)
    running: tuple[Gateway, TestClient]
    # The default body limit: the import route has its own, every other route 64 KiB.
    async with running_gateway(settings, minter) as running:
        yield running[0], CatalogApi(running[1], minter)


@pytest.fixture(scope="module")
def import_api(importing: tuple[Gateway, CatalogApi]) -> CatalogApi:
    return importing[1]


async def batch_attempts(temporal: Client, api: CatalogApi, import_id: str, index: int) -> int:
    """The attempt on which `api`'s import's batch `index` completed (from its history)."""
    workflow_id = caller_import_workflow_id(api.subject, import_id)
    history = await temporal.get_workflow_handle(workflow_id).fetch_history()
    return started_attempt(history, index=index)


async def _status(api: CatalogApi, url: str) -> dict[str, Any]:
    response = await api.client.get(url, headers=api.admin)
    assert response.status == 200, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_import_survives_a_worker_restart_without_duplicates(
    settings: Settings, importing: tuple[Gateway, CatalogApi], services: Services
) -> None:
    gw, api = importing
    prefix = f"IMP-{uuid.uuid4().hex[:6]}"
    products = [
        product_body(f"{prefix}-{i:04d}", title=f"Imported {i}", category="test/import")
        for i in range(PRODUCTS)
    ]
    # The kill lands in batch HELD_BATCH: one of its products exists already, as the
    # import has it, and the test holds its row lock, so the batch's activity starts,
    # waits for the row and is running when the worker dies.
    held = products[HELD_BATCH * BATCH]
    await api.create(**held)
    hold = await Hold.statement(
        settings.db_dsn("catalog"), "SELECT 1 FROM products WHERE sku = $1 FOR UPDATE", held["sku"]
    )
    try:
        response = await api.client.post(
            "/v1/admin/products/import",
            json={"products": products, "batch_size": BATCH},
            headers=api.admin,
        )
        assert response.status == 202, await response.text()
        started = await response.json()
        url = started["status_url"]

        async def batch_waiting() -> dict[str, Any] | None:
            status = await _status(api, url)
            before = status["processed"] == HELD_BATCH * BATCH
            return status if before and await hold.blocked() > 0 else None

        status = await eventually(
            batch_waiting, within=60, what=f"batch {HELD_BATCH} to run and wait for its row"
        )
        assert status["state"] == "running"
        services("catalog").kill()  # SIGKILL while the batch's activity runs
    finally:
        await hold.release()
    services("catalog")  # a new worker picks the import up where its history stands

    async def completed() -> dict[str, Any] | None:
        response = await api.client.get(url, headers=api.admin)
        if response.status in (503, 504):
            return None  # the progress query waits for a worker while the new one starts
        assert response.status == 200, await response.text()
        status: dict[str, Any] = await response.json()
        return status if status["state"] == "completed" else None

    final = await eventually(completed, within=120, what="the import to complete")
    assert final["total"] == final["processed"] == PRODUCTS
    # Every product written once: the killed batch's attempt committed nothing, its
    # retry created the rest of the batch and left the existing product alone.
    assert (final["created"], final["unchanged"], final["updated"]) == (PRODUCTS - 1, 1, 0)
    assert final["failed"] == 0
    # The batch's attempt that was running died with its worker; a later one completed.
    assert await batch_attempts(gw.upstream.temporal, api, started["import_id"], HELD_BATCH) >= 2

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


async def test_an_import_row_without_active_leaves_a_product_off_sale_and_puts_new_ones_on(
    import_api: CatalogApi,
) -> None:
    # A price feed's rows carry no `active`: it must not bring back a product DELETE
    # took off sale (a recall), while a new product it brings is on sale.
    api = import_api
    pulled, fresh, revived = (f"IMP-{uuid.uuid4().hex[:10]}" for _ in range(3))
    for sku in (pulled, revived):
        await api.create(sku=sku)
        response = await api.client.delete(f"/v1/admin/products/{sku}", headers=api.admin)
        assert response.status == 200, await response.text()
    price = {"amount_minor": 777, "currency": "EUR"}
    rows = [
        product_body(sku=pulled, price=price),
        product_body(sku=fresh, price=price),
        product_body(sku=revived, price=price, active=True),  # said outright: back on sale
    ]
    response = await api.client.post(
        "/v1/admin/products/import", json={"products": rows}, headers=api.admin
    )
    assert response.status == 202, await response.text()
    url = (await response.json())["status_url"]

    async def completed() -> dict[str, Any] | None:
        status = await _status(api, url)
        return status if status["state"] == "completed" else None

    status = await eventually(completed)
    assert (status["created"], status["updated"]) == (1, 2), status
    shown = {sku: await api.get(sku) for sku in (pulled, fresh, revived)}
    assert {sku: (p["active"], p["price"]["amount_minor"]) for sku, p in shown.items()} == {
        pulled: (False, 777),
        fresh: (True, 777),
        revived: (True, 777),
    }


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


async def test_an_import_is_its_callers_and_another_caller_with_its_key_imports_anew(
    import_api: CatalogApi,
) -> None:
    # Two integrations with catalog:write whose import keys are numbered alike.
    first, second = import_api, CatalogApi(import_api.client, import_api.minter)
    key = {"Idempotency-Key": f"import-{uuid.uuid4().hex[:8]}-00000007"}

    async def imported(caller: CatalogApi, sku: str) -> dict[str, Any]:
        body = {"products": [product_body(sku=sku, title="Imported lamp")]}
        headers = {**caller.admin, **key}
        response = await caller.client.post("/v1/admin/products/import", json=body, headers=headers)
        assert response.status == 202, await response.text()
        url: str = (await response.json())["status_url"]

        async def completed() -> dict[str, Any] | None:
            status = await _status(caller, url)
            return status if status["state"] == "completed" else None

        return await eventually(completed, what=f"{sku}'s import")

    first_sku, second_sku = (f"IMP-{uuid.uuid4().hex[:10]}" for _ in range(2))
    assert (await imported(first, first_sku))["created"] == 1
    # Another caller can neither read the first caller's import by its id...
    url = f"/v1/admin/imports/{key['Idempotency-Key']}"
    await problem(await second.client.get(url, headers=second.admin), 404, "not-found")
    # ...nor be answered with it (or refused as a reuse of the key): its import runs.
    assert (await imported(second, second_sku))["created"] == 1
    assert (await first.get(second_sku))["title"] == "Imported lamp"
    assert (await _status(first, url))["created"] == 1  # the first caller's, still its own


def _import_body(prefix: str, size: int) -> bytes:
    """MAX_IMPORT realistic products (a long description, a few attributes), padded
    so that the body is `size` bytes."""
    products = [
        product_body(
            f"{prefix}-{i:04d}",
            title=f"Oak desk lamp {i}",
            category="test/import",
            attributes={"material": "oak", "colour": "natural", "bulb": "E27"},
            description="",
        )
        for i in range(MAX_IMPORT)
    ]
    room = size - len(json.dumps({"products": products}))
    text = "Solid oak base, linen shade and a braided cable. " * 100
    for i, product in enumerate(products):
        product["description"] = text[: room // MAX_IMPORT + (i < room % MAX_IMPORT)]
    raw = json.dumps({"products": products}).encode()
    assert len(raw) == size
    return raw


async def test_an_import_of_a_thousand_products_fits_its_own_body_limit(
    import_api: CatalogApi,
) -> None:
    api = import_api
    headers = {**api.admin, "Content-Type": "application/json"}
    prefix = f"BIG-{uuid.uuid4().hex[:6]}"
    over = _import_body(prefix, MAX_IMPORT_BODY_BYTES + 1)
    response = await api.client.post("/v1/admin/products/import", data=over, headers=headers)
    await problem(response, 413, "body-too-large")
    # Every other route keeps the gateway's own limit (64 KiB).
    large = json.dumps(product_body(description="x" * (64 * 1024))).encode()
    response = await api.client.post("/v1/admin/products", data=large, headers=headers)
    await problem(response, 413, "body-too-large")

    full = _import_body(prefix, MAX_IMPORT_BODY_BYTES)
    response = await api.client.post("/v1/admin/products/import", data=full, headers=headers)
    assert response.status == 202, await response.text()
    url = (await response.json())["status_url"]

    async def completed() -> dict[str, Any] | None:
        status = await _status(api, url)
        return status if status["state"] == "completed" else None

    final = await eventually(completed, within=120, what="the 1,000-product import")
    assert (final["created"], final["failed"]) == (MAX_IMPORT, 0)


async def test_non_ascii_products_within_the_body_limit_but_over_temporals_are_413_unstarted(
    importing: tuple[Gateway, CatalogApi],
) -> None:
    # Cyrillic is 2 bytes a letter in the body and 6 in the workflow input (the SDK's
    # JSON escapes it): 1.3 MiB of body would be a 3.4 MiB payload Temporal refuses.
    gw, api = importing
    prefix, import_id = f"CYR-{uuid.uuid4().hex[:6]}", f"import-{uuid.uuid4()}"
    description = "Дубовое основание, льняной абажур и плетёный шнур. " * 45
    products = [
        product_body(f"{prefix}-{i:04d}", title=f"Настольная лампа {i}", description=description)
        for i in range(300)
    ]
    raw = json.dumps({"products": products}, ensure_ascii=False).encode()
    assert len(raw) < MAX_IMPORT_BODY_BYTES
    headers = {**api.admin, "Content-Type": "application/json", "Idempotency-Key": import_id}
    with no_upstream_call(gw):
        response = await api.client.post("/v1/admin/products/import", data=raw, headers=headers)
        document = await problem(response, 413, "body-too-large")
    assert str(MAX_WORKFLOW_INPUT_BYTES) in document["detail"], document
    handle = gw.upstream.temporal.get_workflow_handle(
        caller_import_workflow_id(api.subject, import_id)
    )
    with pytest.raises(RPCError) as missing:
        await handle.describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND


async def test_attribute_names_and_values_have_a_length_limit(
    importing: tuple[Gateway, CatalogApi],
) -> None:
    # A product's event carries all its attributes and must fit one Kafka message.
    gw, api = importing
    for attributes in ({"k" * 65: "oak"}, {"material": "o" * 1001}):
        body = {"products": [product_body(attributes=attributes)]}
        response = await api.client.post("/v1/admin/products/import", json=body, headers=api.admin)
        document = await problem(response, 422, "validation-failed")
        assert "attributes" in str(document["errors"])

    # Started directly (not through the gateway), the import refuses the row itself.
    sku = f"ATTR-{uuid.uuid4().hex[:8]}"
    good, bad = (
        ProductData(
            sku=f"{sku}-{name}",
            title="Oak lamp",
            category="test/import",
            price_minor=1999,
            currency="EUR",
            attributes={"material": value},
        )
        for name, value in (("good", "oak"), ("bad", "o" * 1001))
    )
    import_id = f"attr-{uuid.uuid4()}"
    progress = await gw.upstream.temporal.execute_workflow(
        ImportProductsWorkflow.run,
        ImportInput(import_id, [good, bad]),
        id=import_workflow_id(import_id),
        task_queue=TASK_QUEUE,
        execution_timeout=timedelta(minutes=2),
    )
    assert (progress.created, progress.failed) == (1, 1)
    assert [(e.sku, "attribute values" in e.reason) for e in progress.errors] == [(bad.sku, True)]
