"""Every GET route answers HEAD, found as the same Route, so it is checked as its GET is.

The middlewares authenticate, check scopes and rate-limit by the Route the table's
lookup finds: a HEAD it did not find would be served without any of them.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.openapi import OPENAPI
from gateway.routes import all_routes
from gateway.routing import Route, RouteTable
from tests.unit.test_gateway_openapi import offline_app

GETS = [route for route in all_routes() if route.method == "GET"]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def looked_up(app: web.Application, table: RouteTable, method: str, path: str) -> Route:
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    assert not isinstance(match.http_exception, web.HTTPException), (method, path)
    found = table.lookup(SimpleNamespace(match_info=match))  # type: ignore[arg-type]
    assert found is not None, (method, path)
    return found


@pytest.mark.parametrize("route", GETS, ids=lambda route: route.path)
async def test_head_finds_the_route_of_its_get(route: Route) -> None:
    app = web.Application()
    table = RouteTable(all_routes())
    table.register(app)
    path = concrete(route.path)
    assert await looked_up(app, table, "HEAD", path) is route
    assert await looked_up(app, table, "GET", path) is route


async def test_only_gets_answer_head() -> None:
    app = web.Application()
    RouteTable(all_routes()).register(app)
    heads = {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "HEAD" and route.resource is not None
    }
    assert heads == {route.path for route in GETS}


def test_head_is_not_a_documented_operation() -> None:
    paths = offline_app()[OPENAPI]["paths"]
    assert not any("head" in methods for methods in paths.values())
