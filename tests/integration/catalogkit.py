"""Helpers for the catalog and search integration tests: a gateway with catalog and search."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from aiohttp.test_utils import TestClient

from tests.integration.gatewaykit import TokenMinter, bearer

T = TypeVar("T")


def product_body(sku: str | None = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sku": sku or f"T-{uuid.uuid4().hex[:10]}",
        "title": "Trail Runner Shoe",
        "description": "Light shoe for rocky trails",
        "brand": "Northwind",
        "category": "sports/running/shoes",
        "attributes": {"color": "blue"},
        "price": {"amount_minor": 8999, "currency": "EUR"},
    }
    body.update(overrides)
    return body


class CatalogApi:
    def __init__(self, client: TestClient, minter: TokenMinter):
        self.client = client
        self.minter = minter
        self.read = bearer(minter.token(scope="profile catalog:read"))
        # The admin token's subject: the caller its writes' workflow ids are scoped to.
        self.subject = str(uuid.uuid4())
        # Writes may wait up to 10 s (the edge's default is 2 s): these tests check what a
        # write does, and a reindex of the whole catalog on two shared cores once held one
        # past 2 s in CI.
        self.admin = {
            **bearer(minter.token(scope="profile catalog:read catalog:write", sub=self.subject)),
            "X-Request-Timeout": "10000",
        }

    async def create(self, **overrides: Any) -> dict[str, Any]:
        body = product_body(**overrides)
        response = await self.client.post("/v1/admin/products", json=body, headers=self.admin)
        assert response.status == 201, await response.text()
        return body

    async def get(self, sku: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/products/{sku}", headers=self.read)
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result

    async def set_price(self, sku: str, amount: int) -> dict[str, Any]:
        response = await self.client.post(
            f"/v1/admin/products/{sku}/price",
            json={"amount_minor": amount, "currency": "EUR"},
            headers=self.admin,
        )
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result

    async def search(self, **params: Any) -> dict[str, Any]:
        response = await self.client.get("/v1/search", params=params, headers=self.read)
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result
