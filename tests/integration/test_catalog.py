"""Catalog through the gateway: admin writes run as workflows, reads come from the cache.

A product written through the admin route is readable, is cached, and its
cache entry follows every update; bad input is refused with a clear problem and
changes nothing; a Redis outage slows reads down but does not fail them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from agora import db
from agora.config import Settings
from contracts.agora.catalog.v1 import Product
from contracts.agora.common.v1 import LineItem
from gateway.deps import Gateway
from tests.integration.catalogkit import CatalogApi, product_body
from tests.integration.conftest import Services
from tests.integration.gatewaykit import TokenMinter, no_upstream_call, problem, running_gateway
from workers.catalog.cache import ProductCache, decode
from workers.catalog.reads import CatalogReads

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]


@pytest_asyncio.fixture(scope="session")
async def catalog_gateway(
    settings: Settings, services: Services, minter: TokenMinter
) -> AsyncIterator[tuple[Gateway, TestClient]]:
    services("identity")
    services("catalog")
    async with running_gateway(settings, minter) as running:
        yield running


@pytest.fixture
def api(catalog_gateway: tuple[Gateway, TestClient], minter: TokenMinter) -> CatalogApi:
    return CatalogApi(catalog_gateway[1], minter)


@pytest_asyncio.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url)
    yield client
    await client.aclose()


async def cached_version(redis: aioredis.Redis, sku: str) -> int | None:
    raw = await redis.get(f"catalog:product:{sku}")
    return None if raw is None else decode(raw)[0]


async def test_product_written_through_admin_route_is_readable_cached_and_refreshed_on_update(
    api: CatalogApi, redis: aioredis.Redis
) -> None:
    body = await api.create()
    sku = body["sku"]

    product = await api.get(sku)
    assert product["title"] == body["title"]
    assert product["price"] == {"amount_minor": 8999, "currency": "EUR"}
    assert product["attributes"] == {"color": "blue"}
    assert product["version"] == 1 and product["active"] is True
    assert await cached_version(redis, sku) == 1

    update = {
        k: v for k, v in product_body(sku, title="Trail Runner Shoe II").items() if k != "sku"
    }
    response = await api.client.put(f"/v1/admin/products/{sku}", json=update, headers=api.admin)
    assert response.status == 200, await response.text()
    assert (await response.json()) == {"sku": sku, "version": 2, "changed": True}
    assert await cached_version(redis, sku) == 2
    assert (await api.get(sku))["title"] == "Trail Runner Shoe II"

    # The same update again is not a change: no new version, no new event.
    response = await api.client.put(f"/v1/admin/products/{sku}", json=update, headers=api.admin)
    assert (await response.json())["changed"] is False

    assert (await api.set_price(sku, 7999))["version"] == 3
    assert (await api.get(sku))["price"]["amount_minor"] == 7999

    response = await api.client.delete(f"/v1/admin/products/{sku}", headers=api.admin)
    assert response.status == 200, await response.text()
    deactivated = await api.get(sku)
    assert deactivated["active"] is False and deactivated["version"] == 4

    # An edit without `active` leaves the product off sale; only `active: true` brings it back.
    edit = {**update, "title": "Trail Runner Shoe III"}
    response = await api.client.put(f"/v1/admin/products/{sku}", json=edit, headers=api.admin)
    assert response.status == 200, await response.text()
    edited = await api.get(sku)
    assert edited["title"] == "Trail Runner Shoe III" and edited["active"] is False
    restored = {**edit, "active": True}
    response = await api.client.put(f"/v1/admin/products/{sku}", json=restored, headers=api.admin)
    assert response.status == 200, await response.text()
    assert (await api.get(sku))["active"] is True


async def test_batch_get_and_category_listing_in_keyset_pages(api: CatalogApi) -> None:
    root = f"test-{uuid.uuid4().hex[:8]}"
    skus = sorted([(await api.create(category=f"{root}/a/b"))["sku"] for _ in range(3)])
    elsewhere = (await api.create(category=f"{root}x/a"))["sku"]

    response = await api.client.get(
        "/v1/products",
        params=[("sku", skus[0]), ("sku", "NOPE-1"), ("sku", skus[1])],
        headers=api.read,
    )
    assert response.status == 200, await response.text()
    batch = await response.json()
    assert [p["sku"] for p in batch["products"]] == [skus[0], skus[1]]
    assert batch["not_found"] == ["NOPE-1"]

    seen: list[str] = []
    cursor = ""
    for _ in range(3):
        params = {"category": root, "limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await api.client.get("/v1/products", params=params, headers=api.read)
        assert response.status == 200, await response.text()
        page = await response.json()
        seen += [p["sku"] for p in page["products"]]
        cursor = page.get("next_cursor", "")
        if not cursor:
            break
    # The category and its descendants, never a sibling that merely shares the prefix.
    assert seen == skus and elsewhere not in seen


async def test_a_cached_listing_page_leaves_out_a_product_deactivated_or_moved_since(
    api: CatalogApi,
) -> None:
    # The page's sku list stays cached for 15 s; the products in it must be as they
    # are now, so one deactivated or moved away is gone from the next read at once.
    root = f"test-{uuid.uuid4().hex[:8]}"
    skus = sorted([(await api.create(category=f"{root}/a"))["sku"] for _ in range(3)])
    deactivated, moved, kept = skus

    async def listed() -> list[str]:
        response = await api.client.get(
            "/v1/products", params={"category": root, "limit": "10"}, headers=api.read
        )
        assert response.status == 200, await response.text()
        return [p["sku"] for p in (await response.json())["products"]]

    assert await listed() == skus  # the page is cached now
    response = await api.client.delete(f"/v1/admin/products/{deactivated}", headers=api.admin)
    assert response.status == 200, await response.text()
    elsewhere = {k: v for k, v in product_body(moved, category=f"{root}x/a").items() if k != "sku"}
    response = await api.client.put(
        f"/v1/admin/products/{moved}", json=elsewhere, headers=api.admin
    )
    assert response.status == 200, await response.text()

    assert await listed() == [kept]


async def test_a_write_retried_with_its_key_answers_the_first_and_another_body_is_refused(
    api: CatalogApi,
) -> None:
    sku = f"IDEM-{uuid.uuid4().hex[:10]}"
    headers = {**api.admin, "Idempotency-Key": f"create-{uuid.uuid4()}"}
    body = product_body(sku=sku, title="Idempotent lamp")
    answers = []
    for _ in range(2):  # the second after the first write's workflow has closed
        response = await api.client.post("/v1/admin/products", json=body, headers=headers)
        assert response.status == 201, await response.text()
        answers.append(await response.json())
    assert answers[0] == answers[1]
    assert answers[0]["version"] == 1
    other = {**body, "title": "Another lamp"}
    reused = await api.client.post("/v1/admin/products", json=other, headers=headers)
    detail = (await problem(reused, 409, "conflict"))["detail"]
    assert "Idempotency-Key" in detail
    assert (await api.get(sku))["title"] == "Idempotent lamp"
    # Another sku is another body too: no second product made under the same key.
    other_sku = f"IDEM-{uuid.uuid4().hex[:10]}"
    reused = await api.client.post(
        "/v1/admin/products", json={**body, "sku": other_sku}, headers=headers
    )
    await problem(reused, 409, "conflict")
    missing = await api.client.get(f"/v1/products/{other_sku}", headers=api.read)
    await problem(missing, 404, "not-found")


async def test_another_callers_write_with_the_same_key_is_a_write_of_its_own(
    api: CatalogApi,
) -> None:
    # Two integrations with catalog:write whose key counters both stand at 7.
    first, second = api, CatalogApi(api.client, api.minter)
    body = await first.create(sku=f"KEYS-{uuid.uuid4().hex[:10]}")
    sku, url = body["sku"], f"/v1/admin/products/{body['sku']}"
    key = {"Idempotency-Key": f"{uuid.uuid4().hex[:8]}-00000007"}

    async def deactivate(caller: CatalogApi) -> dict[str, object]:
        response = await caller.client.delete(url, headers={**caller.admin, **key})
        assert response.status == 200, await response.text()
        answer: dict[str, object] = await response.json()
        return answer

    deactivated = await deactivate(first)
    assert deactivated == {"sku": sku, "version": 2, "changed": True}
    assert await deactivate(first) == deactivated  # its own retry: the first result
    reactivate = {k: v for k, v in body.items() if k != "sku"} | {"active": True}
    response = await first.client.put(url, json=reactivate, headers=first.admin)
    assert response.status == 200, await response.text()
    assert (await first.get(sku))["active"] is True

    # Not the first caller's old answer: the product is deactivated again.
    assert await deactivate(second) == {"sku": sku, "version": 4, "changed": True}
    product = await second.get(sku)
    assert (product["active"], product["version"]) == (False, 4)


async def test_reads_need_a_token_and_writes_need_the_write_scope(api: CatalogApi) -> None:
    await problem(await api.client.get("/v1/products/ANY"), 401, "token-missing")
    await problem(
        await api.client.post("/v1/admin/products", json=product_body(), headers=api.read),
        403,
        "insufficient-scope",
    )


async def test_a_sku_no_product_can_have_is_refused_at_the_edge(
    catalog_gateway: tuple[Gateway, TestClient], api: CatalogApi, redis: aioredis.Redis
) -> None:
    # Unchecked, any string up to the request line's limit cost catalog a lookup and a
    # cached "not found" entry of its own.
    gw, _ = catalog_gateway
    odd = "x" * 5000
    with no_upstream_call(gw):
        await problem(
            await api.client.get(f"/v1/products/{odd}", headers=api.read), 400, "invalid-argument"
        )
        await problem(
            await api.client.get(
                "/v1/products", params=[("sku", "SKU-1"), ("sku", odd)], headers=api.read
            ),
            422,
            "validation-failed",
        )
    assert not await redis.exists(f"catalog:product:{odd}")


async def test_bad_input_gets_a_clear_problem_and_changes_nothing(
    api: CatalogApi, redis: aioredis.Redis
) -> None:
    client = api.client
    await problem(await client.get("/v1/products/NO-SUCH-SKU", headers=api.read), 404, "not-found")

    negative = product_body(price={"amount_minor": -1, "currency": "EUR"})
    await problem(
        await client.post("/v1/admin/products", json=negative, headers=api.admin),
        422,
        "validation-failed",
    )
    wrong_currency = product_body(price={"amount_minor": 100, "currency": "XYZ"})
    document = await problem(
        await client.post("/v1/admin/products", json=wrong_currency, headers=api.admin),
        422,
        "validation-failed",
    )
    assert "currency" in str(document["errors"])
    for body in (negative, wrong_currency):
        await problem(
            await client.get(f"/v1/products/{body['sku']}", headers=api.read), 404, "not-found"
        )

    sku = (await api.create())["sku"]
    await problem(
        await client.post(
            f"/v1/admin/products/{sku}/price",
            json={"amount_minor": 5, "currency": "eur"},
            headers=api.admin,
        ),
        422,
        "validation-failed",
    )
    await problem(
        await client.post(
            "/v1/admin/products/NO-SUCH-SKU/price",
            json={"amount_minor": 5, "currency": "EUR"},
            headers=api.admin,
        ),
        404,
        "not-found",
    )
    await problem(
        await client.post(
            "/v1/admin/products", json=product_body(sku, title="Other"), headers=api.admin
        ),
        409,
        "conflict",
    )
    stale = {k: v for k, v in product_body(sku, title="X").items() if k != "sku"}
    await problem(
        await client.put(
            f"/v1/admin/products/{sku}", json={**stale, "expected_version": 7}, headers=api.admin
        ),
        409,
        "conflict",
    )
    # A path sku becomes part of the write's workflow id: one no rule allows (too
    # long for Temporal, a decoded newline) is refused at the edge, not a 503.
    for bad in ("a" * 1000, f"{sku}%0A"):
        await problem(
            await client.put(f"/v1/admin/products/{bad}", json=stale, headers=api.admin),
            400,
            "invalid-argument",
        )
    await problem(
        await client.get(f"/v1/admin/imports/{'k' * 1000}", headers=api.admin),
        400,
        "invalid-argument",
    )
    product = await api.get(sku)
    assert product["version"] == 1 and product["title"] == "Trail Runner Shoe"
    assert product["price"] == {"amount_minor": 8999, "currency": "EUR"}

    for params in (
        {"limit": "abc"},
        {"limit": "101"},
        {"category": "Not A Path"},
        {"bogus": "1"},
        {"sku": "a", "category": "x"},
    ):
        await problem(
            await client.get("/v1/products", params=params, headers=api.read),
            422,
            "validation-failed",
        )
    await problem(
        await client.get(
            "/v1/products", params={"category": "x", "cursor": "!!"}, headers=api.read
        ),
        400,
        "invalid-argument",
    )


async def test_a_cache_outage_degrades_to_the_database(settings: Settings, api: CatalogApi) -> None:
    sku = (await api.create())["sku"]
    pool = await db.create_pool(settings, "catalog", size=2)
    # Nothing listens on port 1: every Redis call fails at once.
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        reads = CatalogReads(pool, ProductCache(dead))
        assert (await reads.get(sku)).title == "Trail Runner Shoe"
        products, missing = await reads.batch_get([sku, "NOPE-2"])
        assert [p.sku for p in products] == [sku] and missing == ["NOPE-2"]
        lines, subtotal, unavailable = await reads.price_lines(
            [LineItem(sku=sku, quantity=2)], "EUR"
        )
        assert [line.sku for line in lines] == [sku]
        assert subtotal.amount_minor == 2 * 8999 and not unavailable
    finally:
        await dead.aclose()
        await pool.close()


async def test_concurrent_misses_on_one_key_load_it_once(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """Two 'processes' (cache instances), 40 concurrent readers of a cold key: one load."""
    sku = f"STAMPEDE-{uuid.uuid4().hex[:8]}"
    loads = 0

    async def loader(key: str) -> Product | None:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)  # a slow query: everyone else arrives meanwhile
        return Product(sku=key, title="Hot", version=1)

    # The losers wait for the winner's load; on a busy machine 0.2 s (the default) may
    # not cover its 0.05 s plus a Redis round trip, and then a loser loads as well.
    caches = [ProductCache(redis, wait_s=5), ProductCache(redis, wait_s=5)]
    results = await asyncio.gather(*(caches[i % 2].get(sku, loader) for i in range(40)))
    assert {r.title for r in results if r is not None} == {"Hot"}
    assert loads == 1
