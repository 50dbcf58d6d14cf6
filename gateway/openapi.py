"""The OpenAPI 3.1 document and the HTML docs page, generated from the route table.

Nothing here is written by hand per route: paths, security, bodies, query
parameters, answers and the problems a route can answer all come from the
`Route` declarations and their pydantic models (JSON Schema 2020-12, which is
what OpenAPI 3.1 uses).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from agora import signing
from gateway import idempotency
from gateway.failures import UPSTREAM_PROBLEMS
from gateway.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from gateway.problems import PROBLEM_TYPES, problem_type_uri
from gateway.ratelimit import Rate
from gateway.routing import Route
from gateway.schemas import ProblemResponse

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

OPENAPI = web.AppKey("openapi", dict)
DOCS_HTML = web.AppKey("docs_html", str)

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{(\w+)}")

_BODY_PROBLEMS = ("body-too-large", "unsupported-media-type", "malformed-json", "validation-failed")
_TOKEN_PROBLEMS = (
    "token-missing",
    "token-malformed",
    "token-algorithm-rejected",
    "token-key-unknown",
    "token-signature-invalid",
    "token-expired",
    "token-not-yet-valid",
    "token-audience-invalid",
    "token-issuer-invalid",
    "token-claims-invalid",
    "token-revoked",
)
_SIGNATURE_PROBLEMS = (
    "signature-required",
    "signature-invalid",
    "signature-stale",
    "nonce-replayed",
)


def route_problems(route: Route) -> list[str]:
    """Every problem code a route may answer: the pipeline's and its own."""
    codes: list[str] = []
    if route.body is not None:
        codes += _BODY_PROBLEMS
    if route.query is not None or route.body is None:
        codes.append("validation-failed")
    if route.auth:
        codes += _TOKEN_PROBLEMS + _SIGNATURE_PROBLEMS
        if route.scopes:
            codes.append("insufficient-scope")
    if route.route_class is not None:
        codes += ("rate-limited", "dependency-unavailable")
    if route.path.startswith("/v1/"):
        # invalid-argument: an X-Request-Timeout outside 1-30000 (the edge refuses it).
        codes += (*UPSTREAM_PROBLEMS, "invalid-argument")
    codes += route.problems
    return sorted(set(codes), key=lambda c: (PROBLEM_TYPES[c].status, c))


def _models(routes: Sequence[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ProblemResponse, "serialization")]
    for route in routes:
        for model, mode in (
            (route.body, "validation"),
            (route.form, "validation"),
            (route.response, "serialization"),
        ):
            if model is not None and (model, mode) not in seen:
                seen.append((model, mode))  # type: ignore[arg-type]
    return seen


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def _operation(
    route: Route,
    refs: Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]],
    rates: dict[str, Rate],
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
    }
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(route.path)
    ]
    if route.query is not None:
        parameters += _query_parameters(route.query)
    if route.path.startswith("/v1/"):
        parameters.append(
            {
                "name": "X-Request-Timeout",
                "in": "header",
                "required": False,
                "description": "Milliseconds the client will wait; bounds upstream deadlines",
                "schema": {"type": "integer", "minimum": 1, "maximum": 30000},
            }
        )
    if route.idempotency:
        parameters.append(
            {
                "name": idempotency.HEADER,
                "in": "header",
                "required": route.idempotency == "required",
                "description": "The same key on a retry returns the first attempt's result"
                " instead of writing twice"
                + ("" if route.idempotency == "required" else " (a fresh key if left out)"),
                "schema": {"type": "string", "pattern": idempotency.PATTERN},
            }
        )
    if parameters:
        operation["parameters"] = parameters
    if route.auth:
        operation["security"] = [{"bearerAuth": sorted(route.scopes)}]
    else:
        operation["security"] = []
    if route.route_class is not None:
        rate = rates.get(route.route_class)
        operation["x-agora-rate-limit"] = {
            "class": route.route_class,
            **(
                {"per_second": rate.count / rate.period_s, "burst": rate.burst}
                if rate is not None
                else {}
            ),
        }
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    if route.form is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {FORM_CONTENT_TYPE: {"schema": refs[(route.form, "validation")]}},
        }
    responses: dict[str, Any] = {}
    if route.response is not None:
        responses[str(route.status)] = {
            "description": route.summary,
            "content": {"application/json": {"schema": refs[(route.response, "serialization")]}},
        }
    elif route.raw_response is not None:
        responses[str(route.status)] = {
            "description": route.summary,
            "content": {route.raw_response: {"schema": {}}},
        }
    else:
        responses[str(route.status)] = {"description": route.summary}
    for answer in route.other_answers:
        responses[str(answer.status)] = {"description": answer.description}
        if answer.content_type is not None:
            responses[str(answer.status)]["content"] = {answer.content_type: {"schema": {}}}
    by_status: dict[int, list[str]] = {}
    for code in route_problems(route):
        by_status.setdefault(PROBLEM_TYPES[code].status, []).append(code)
    for status, codes in sorted(by_status.items()):
        responses[str(status)] = {
            "description": "; ".join(
                f"{problem_type_uri(c)} ({PROBLEM_TYPES[c].title})" for c in codes
            ),
            "content": {
                PROBLEM_CONTENT_TYPE: {"schema": refs[(ProblemResponse, "serialization")]},
                **({route.problem_page: {"schema": {}}} if route.problem_page else {}),
            },
        }
    operation["responses"] = responses
    return operation


def build_openapi(routes: Sequence[Route], rates: dict[str, Rate]) -> dict[str, Any]:
    refs, definitions = models_json_schema(_models(routes), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs, rates)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agora API",
            "version": "1",
            "description": (
                "The public API of the Agora order platform. Errors are application/problem+json"
                " (RFC 9457) with a stable `type`. API clients (tokens with ptype api_client) sign"
                f" every request: {signing.TIMESTAMP_HEADER}, {signing.NONCE_HEADER} and"
                f" {signing.SIGNATURE_HEADER} (see docs/gateway.md)."
            ),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "EdDSA access token from /v1/auth/signin or /v1/auth/token;"
                    " the listed roles are the scopes it must hold.",
                }
            },
        },
    }


def render_docs(document: dict[str, Any]) -> str:
    """A self-contained HTML page (no scripts, no CDN) describing every operation."""
    esc = html.escape
    schemas = document["components"]["schemas"]
    rows, sections = [], []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            anchor = op["operationId"]
            scopes = " ".join(op["security"][0]["bearerAuth"]) if op["security"] else "public"
            rows.append(
                f"<tr><td><code>{esc(method.upper())}</code></td>"
                f'<td><a href="#{esc(anchor)}"><code>{esc(path)}</code></a></td>'
                f"<td>{esc(op['summary'])}</td><td>{esc(scopes)}</td></tr>"
            )
            parts = [f'<h3 id="{esc(anchor)}"><code>{esc(method.upper())} {esc(path)}</code></h3>']
            parts.append(f"<p>{esc(op['summary'])}. Auth: <code>{esc(scopes)}</code>.</p>")
            for content_type, media in op.get("requestBody", {}).get("content", {}).items():
                name = media["schema"]["$ref"].rsplit("/", 1)[-1]
                parts.append(
                    f"<p>Body <code>{esc(name)}</code> as <code>{esc(content_type)}</code>:</p>"
                    f"<pre>{esc(json.dumps(schemas[name], indent=2))}</pre>"
                )
            for param in op.get("parameters", []):
                parts.append(
                    f"<p>Parameter <code>{esc(param['name'])}</code> in {esc(param['in'])}"
                    f"{' (required)' if param['required'] else ''}</p>"
                )
            parts.append("<ul>")
            for status, response in op["responses"].items():
                parts.append(f"<li><b>{esc(status)}</b> {esc(response['description'])}</li>")
            parts.append("</ul>")
            sections.append("\n".join(parts))
    problems = "".join(
        f"<tr><td><code>{esc(problem_type_uri(code))}</code></td><td>{kind.status}</td>"
        f"<td>{esc(kind.title)}</td></tr>"
        for code, kind in PROBLEM_TYPES.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(document["info"]["title"])}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; }}
pre {{ background: #f5f5f5; padding: .6rem; overflow-x: auto; font-size: 13px; }}
</style></head><body>
<h1>{esc(document["info"]["title"])}</h1>
<p>{esc(document["info"]["description"])}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>
(OpenAPI {esc(document["openapi"])}).</p>
<h2>Operations</h2>
<table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Scopes</th></tr>{"".join(rows)}</table>
{"".join(sections)}
<h2>Problem types</h2>
<table><tr><th>type</th><th>status</th><th>title</th></tr>{problems}</table>
</body></html>
"""
