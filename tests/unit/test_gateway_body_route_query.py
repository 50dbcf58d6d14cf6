"""A route that takes a JSON body takes no query parameters either: before, `bind`
looked at the query only on routes without a body, so `POST /v1/orders?dry_run=true`
placed a real order and charged for it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.problems import Problem
from gateway.routes import all_routes
from gateway.routing import Route, bind

BODY_ROUTES = [r for r in all_routes() if r.body is not None and r.query is None]


def test_the_body_routes_include_the_writes_that_cost_money() -> None:
    paths = {(r.method, r.path) for r in BODY_ROUTES}
    assert ("POST", "/v1/orders") in paths
    assert ("POST", "/v1/orders/{order_id}/refunds") in paths


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: f"{r.method} {r.path}")
@pytest.mark.parametrize("query", ["dry_run=true", "dry_run=true&dry_run=1", "x="])
async def test_a_body_route_refuses_a_query_before_its_handler_runs(
    route: Route, query: str
) -> None:
    ran: list[Any] = []

    async def handler(request: Any, payload: Any) -> None:
        ran.append(payload)

    handle = bind(dataclasses.replace(route, handler=handler))
    request = make_mocked_request(
        route.method, f"/anything?{query}", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(Problem) as refused:
        await handle(request)
    assert refused.value.code == "validation-failed"
    assert "no query parameters" in refused.value.detail
    assert ran == []
