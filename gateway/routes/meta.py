"""Health, the JWK set, and the API's own description (OpenAPI document and docs page)."""

from __future__ import annotations

from aiohttp import web

from gateway.deps import deps
from gateway.health import readiness_checks, run_checks
from gateway.openapi import DOCS_HTML, OPENAPI
from gateway.routing import Answer, Route
from gateway.schemas import HealthResponse, JwksResponse


async def jwks(request: web.Request, _: None) -> web.Response:
    gw = deps(request)
    if not gw.jwks.loaded:
        await gw.jwks.refresh()
    body = JwksResponse.model_validate(gw.jwks.document())
    # Short cache: a rotated key must reach verifiers before tokens signed with it do.
    return web.json_response(
        body.model_dump(mode="json", exclude_none=True),
        headers={"Cache-Control": "public, max-age=60"},
    )


async def healthz(request: web.Request, _: None) -> HealthResponse:
    return HealthResponse(status="ok")


async def readyz(request: web.Request, _: None) -> web.Response:
    results = await run_checks(readiness_checks(deps(request)))
    ready = all(results.values())
    body = HealthResponse(status="ready" if ready else "not ready", checks=results)
    return web.json_response(body.model_dump(mode="json"), status=200 if ready else 503)


async def openapi_document(request: web.Request, _: None) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def docs(request: web.Request, _: None) -> web.Response:
    return web.Response(text=request.app[DOCS_HTML], content_type="text/html")


ROUTES = [
    Route(
        "GET",
        "/.well-known/jwks.json",
        jwks,
        "Public keys that verify access tokens (RFC 7517)",
        "meta",
        response=JwksResponse,
    ),
    Route("GET", "/healthz", healthz, "Liveness", "meta", response=HealthResponse),
    Route(
        "GET",
        "/readyz",
        readyz,
        "Readiness: signing keys (JWKS) loaded",
        "meta",
        response=HealthResponse,
        other_answers=(Answer(503, "Not ready: the same body, a check false", "application/json"),),
    ),
    Route(
        "GET",
        "/openapi.json",
        openapi_document,
        "This API's OpenAPI 3.1 document",
        "meta",
        raw_response="application/json",
    ),
    Route("GET", "/docs", docs, "This API's documentation page", "meta", raw_response="text/html"),
]
