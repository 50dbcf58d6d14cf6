"""The OpenAPI document describes exactly the routes the gateway serves."""

from __future__ import annotations

import re
from unittest.mock import MagicMock

from aiohttp import web

from agora import config
from gateway.app import build_app, rates_from
from gateway.deps import Gateway
from gateway.jwks import JwksCache
from gateway.metrics import GatewayMetrics
from gateway.openapi import OPENAPI
from gateway.problems import PROBLEM_TYPES
from gateway.ratelimit import Admitter
from gateway.routes import all_routes
from gateway.routing import RouteTable
from gateway.tokens import TokenVerifier


def offline_app() -> web.Application:
    """The real app and route table, with dependencies that are never called."""
    settings = config.load({"AGORA_PROFILE": "test"})

    async def no_keys() -> list[dict[str, str]]:
        return []

    jwks = JwksCache(no_keys)
    gw = Gateway(
        settings=settings,
        redis=MagicMock(),
        admitter=Admitter(MagicMock(), rates_from(settings)),
        jwks=jwks,
        verifier=TokenVerifier(jwks, issuer="i", audience="a"),
        secrets=MagicMock(),
        upstream=MagicMock(),
        hasher=MagicMock(),
        metrics=GatewayMetrics(),
        routes=RouteTable(all_routes()),
    )
    return build_app(gw)


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    operations = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # added by aiohttp beside each GET
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        operations.add((route.method.lower(), path))
    return operations


def test_every_served_route_is_documented_and_every_documented_route_is_served() -> None:
    app = offline_app()
    document = app[OPENAPI]
    documented = {
        (method, path) for path, methods in document["paths"].items() for method in methods
    }
    served = router_operations(app)
    assert served == documented
    assert ("delete", "/v1/admin/api-clients/{client_id}") in served
    # One operation per declared route: none lost, none duplicated.
    assert len(served) == len(all_routes())


def test_document_is_openapi_3_1_with_resolvable_references() -> None:
    document = offline_app()[OPENAPI]
    assert document["openapi"].startswith("3.1")
    schemas = document["components"]["schemas"]
    text = str(document)
    for ref in re.findall(r"'#/components/schemas/([^']+)'", text):
        assert ref in schemas, ref
    register = document["paths"]["/v1/accounts"]["post"]
    body_ref = register["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schemas[body_ref.rsplit("/", 1)[-1]]["additionalProperties"] is False


def test_protected_routes_document_their_scopes_and_problems() -> None:
    document = offline_app()[OPENAPI]
    listing = document["paths"]["/v1/admin/api-clients"]["get"]
    assert listing["security"] == [{"bearerAuth": ["identity:admin"]}]
    assert {"401", "403", "429", "503"} <= set(listing["responses"])
    assert "insufficient-scope" in listing["responses"]["403"]["description"]
    assert {p["name"] for p in listing["parameters"]} >= {"include_revoked", "page_size", "cursor"}
    assert document["paths"]["/healthz"]["get"]["security"] == []


def test_problem_catalogue_codes_are_stable_slugs() -> None:
    for code, kind in PROBLEM_TYPES.items():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", code)
        assert 400 <= kind.status <= 599
