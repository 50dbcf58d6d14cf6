"""The OpenAPI document describes exactly the routes the gateway serves."""

from __future__ import annotations

import re
from unittest.mock import MagicMock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from agora import config
from gateway.app import build_app, rates_from
from gateway.deps import Gateway
from gateway.idempotency import idempotency_key
from gateway.jwks import JwksCache
from gateway.metrics import GatewayMetrics
from gateway.openapi import OPENAPI
from gateway.problems import PROBLEM_TYPES, Problem
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
        passwords=MagicMock(),
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


def test_a_route_answering_a_form_and_a_token_documents_both_ways() -> None:
    # POST /codec/session: a form gets an HTML page (also for its problems), a staff
    # Bearer token gets 204 and problem+json.
    document = offline_app()[OPENAPI]
    session = document["paths"]["/codec/session"]["post"]
    body = session["requestBody"]
    assert body["required"] is False
    form_ref = body["content"]["application/x-www-form-urlencoded"]["schema"]["$ref"]
    form = document["components"]["schemas"][form_ref.rsplit("/", 1)[-1]]
    assert set(form["required"]) == {"email", "password"}
    responses = session["responses"]
    assert set(responses["200"]["content"]) == {"text/html"}
    assert "content" not in responses["204"]
    for status in ("400", "401", "429", "503"):
        assert set(responses[status]["content"]) == {"application/problem+json", "text/html"}
    assert "invalid-credentials" in responses["401"]["description"]
    # A JSON route's problems stay problem+json only.
    listing = document["paths"]["/v1/admin/api-clients"]["get"]["responses"]
    assert set(listing["401"]["content"]) == {"application/problem+json"}


def test_problem_catalogue_codes_are_stable_slugs() -> None:
    for code, kind in PROBLEM_TYPES.items():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", code)
        assert 400 <= kind.status <= 599


def test_writes_that_take_an_idempotency_key_document_it() -> None:
    paths = offline_app()[OPENAPI]["paths"]

    def key_header(method: str, path: str) -> dict[str, object] | None:
        parameters = paths[path][method].get("parameters", [])
        return next((p for p in parameters if p["name"] == "Idempotency-Key"), None)

    placed = key_header("post", "/v1/orders")
    assert placed is not None and placed["required"] is True and placed["in"] == "header"
    restock = key_header("post", "/v1/admin/inventory/{sku}/restock")
    assert restock is not None and restock["required"] is False
    assert key_header("post", "/v1/admin/products") is not None
    assert key_header("get", "/v1/orders/{order_id}") is None


@pytest.mark.parametrize("required", [True, False])
@pytest.mark.parametrize("bad", ["short", "has space in it", "x" * 129, "ünïcode-key"])
def test_an_idempotency_key_that_breaks_the_rule_is_refused_not_replaced(
    bad: str, required: bool
) -> None:
    with pytest.raises(Problem) as refused:
        idempotency_key(_post_with_key(bad), required=required)
    assert refused.value.code == "invalid-argument"


def test_an_idempotency_key_is_kept_required_or_fresh_when_optional() -> None:
    assert idempotency_key(_post_with_key("retry-key-0001"), required=True) == "retry-key-0001"
    assert len(idempotency_key(_post_with_key(None), required=False)) == 32
    with pytest.raises(Problem):
        idempotency_key(_post_with_key(None), required=True)


def _post_with_key(value: str | None) -> web.Request:
    headers = {} if value is None else {"Idempotency-Key": value}
    return make_mocked_request("POST", "/v1/admin/products", headers=headers)


def test_only_plain_reads_are_served_without_redis() -> None:
    # Staff reads fail closed like writes: a revoked auditor must not read the log
    # (every event's payload) through a Redis outage.
    by_operation = {(r.method, r.path): r for r in all_routes()}
    assert by_operation[("GET", "/v1/products/{sku}")].fails_open
    assert by_operation[("GET", "/v1/orders")].fails_open
    assert not by_operation[("GET", "/v1/audit/events")].fails_open
    assert not by_operation[("GET", "/v1/admin/api-clients")].fails_open
    assert not by_operation[("POST", "/v1/orders")].fails_open


@pytest.mark.parametrize(
    ("method", "path", "status", "named"),
    [
        # Password hashing or checking saturated (agora/passwords.py, identity's
        # RESOURCE_EXHAUSTED): answered, but the document named only rate-limited.
        ("post", "/v1/accounts", "429", "upstream-rate-limited"),
        ("post", "/v1/auth/signin", "429", "upstream-rate-limited"),
        ("post", "/codec/session", "429", "upstream-rate-limited"),
        # Answered while the signing keys are not loaded.
        ("get", "/readyz", "503", "Not ready"),
    ],
)
def test_answers_that_only_some_routes_give_are_documented(
    method: str, path: str, status: str, named: str
) -> None:
    responses = offline_app()[OPENAPI]["paths"][path][method]["responses"]
    assert named in responses[status]["description"]
