"""The route table: one declaration per route drives the router, the pipeline and OpenAPI.

A `Route` says who may call it (token and scopes), which rate-limit class it is
in, and the pydantic models of its body, query and answer. The middlewares read
it to authenticate and admit, `bind` parses the input, and gateway/openapi.py
documents exactly the same table, so the docs cannot drift from the code.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, get_args, get_origin

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute
from pydantic import BaseModel, ValidationError

from agora import scopes
from gateway.problems import Problem

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request, Any], Awaitable[BaseModel | web.StreamResponse | None]]

ROUTE_CLASSES = ("read", "write", "auth")
# A route needing one of these is sensitive: it fails closed when Redis is down. Staff
# reads are among them: the audit log holds every event's payload (emails, orders),
# and a revoked staff token must not read it through an outage.
SENSITIVE_SCOPES = frozenset(
    {
        scopes.ADMIN,
        scopes.IDENTITY_ADMIN,
        scopes.AUDIT_READ,
        scopes.CATALOG_WRITE,
        scopes.INVENTORY_WRITE,
        # Support staff decode Temporal payloads (docs/temporal-ui.md): a staff token
        # fails closed on every route, theirs too.
        scopes.SUPPORT,
    }
)


@dataclass(frozen=True)
class Answer:
    """A successful answer beside a route's main one, for the OpenAPI doc."""

    status: int
    description: str
    content_type: str | None = None  # None: no body


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    # Bearer token required; the token must hold every scope in `scopes`.
    auth: bool = False
    scopes: frozenset[str] = frozenset()
    # Rate-limit class (settings.rate_limits); None: not rate limited (health, docs).
    route_class: str | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    # Problem codes this route answers beyond the pipeline's own (for the OpenAPI doc).
    problems: tuple[str, ...] = ()
    # Raw (non-JSON-model) response, described for the OpenAPI doc.
    raw_response: str | None = None
    # The Idempotency-Key header (gateway/idempotency.py): "required", "optional" or "".
    idempotency: str = ""
    # An optional HTML form body (application/x-www-form-urlencoded) its handler reads.
    form: type[BaseModel] | None = None
    # Other successful answers, e.g. 204 to a token where a form gets a page.
    other_answers: tuple[Answer, ...] = ()
    # A content type its problems may also come in: a form's page shows the problem.
    problem_page: str | None = None
    # Its own body limit instead of the app's client_max_size (the bulk import takes
    # more than any other route); None: the app's.
    max_body_bytes: int | None = None
    # Its answers carry credentials (tokens, a client secret): every answer, a problem
    # too, says Cache-Control: no-store and Pragma: no-cache (RFC 6749 §5.1).
    secret_answers: bool = False

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.body, self.query, self.form)) > 1:
            raise ValueError(
                f"{self.method} {self.path}: a route takes a body or a query, not both"
            )
        if self.route_class is not None and self.route_class not in ROUTE_CLASSES:
            raise ValueError(f"{self.method} {self.path}: unknown route class {self.route_class}")
        if self.scopes and not self.auth:
            raise ValueError(f"{self.method} {self.path}: scopes need auth=True")
        if self.idempotency not in ("", "required", "optional"):
            raise ValueError(f"{self.method} {self.path}: idempotency is required|optional|''")

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def fails_open(self) -> bool:
        """Whether the route is served without Redis (no rate limit, no revocation check).

        Only plain reads: writes, auth and admin routes fail closed (docs/gateway.md).
        """
        return self.route_class == "read" and not (self.scopes & SENSITIVE_SCOPES)

    def fails_open_for(self, held: frozenset[str]) -> bool:
        """`fails_open`, unless the caller holds a sensitive scope: a handler may widen
        what such a caller sees (an admin reads any order through the customer's
        route), and a revoked staff token must not act through an outage."""
        return self.fails_open and not (held & SENSITIVE_SCOPES)


class RouteTable:
    """The routes, and the lookup from aiohttp's matched route back to ours."""

    def __init__(self, routes: Iterable[Route]):
        self.routes = tuple(routes)
        self._by_aiohttp: dict[AbstractRoute, Route] = {}

    def register(self, app: web.Application) -> None:
        for route in self.routes:
            handler = bind(route)
            for method in _methods(route):
                registered = app.router.add_route(method, route.path, handler)
                # HEAD maps to its GET's Route: the middlewares find it through this
                # lookup, and a route they do not find is served without auth.
                self._by_aiohttp[registered] = route

    def lookup(self, request: web.Request) -> Route | None:
        return self._by_aiohttp.get(request.match_info.route)


def _methods(route: Route) -> tuple[str, ...]:
    """The methods a route answers: a GET answers HEAD too, as its GET without the body
    (RFC 9110; curl -I, uptime checkers and load balancers send it)."""
    return (route.method, "HEAD") if route.method == "GET" else (route.method,)


def _validation_problem(error: ValidationError, where: str) -> Problem:
    # Never echo the input back: it may hold a password.
    errors = [
        {
            "location": [where, *error_item["loc"]],
            "message": error_item["msg"],
            "type": error_item["type"],
        }
        for error_item in error.errors(include_url=False, include_input=False)
    ]
    return Problem(
        "validation-failed",
        f"the request {where} does not match the schema",
        extensions={"errors": errors},
    )


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


# PostgreSQL text cannot hold NUL, so a NUL that got through would fail deep in a
# service (a 502); no field of this API can legitimately carry one.
_NUL_PROBLEM = "text must not contain NUL characters"


def refuse_nul(values: Any) -> None:
    """Refuse a NUL anywhere in `values` (strings, lists, dicts) as invalid-argument."""
    if _has_nul(values):
        raise Problem("invalid-argument", _NUL_PROBLEM)


def reject_nul(request: web.Request) -> None:
    """Refuse a NUL in a path parameter or a query parameter's name or value."""
    query = request.rel_url.query
    refuse_nul([*request.match_info.values(), *query.keys(), *query.values()])


def path_param(request: web.Request, name: str, pattern: re.Pattern[str], rule: str) -> str:
    """A path parameter that must match `pattern` in full: aiohttp decodes it (a
    `%0A` is a newline), and one that reaches a workflow id or a store unchecked
    fails there (a Temporal id too long, a row no rule would allow)."""
    value = request.match_info[name]
    if not pattern.fullmatch(value):
        raise Problem("invalid-argument", f"{name} must be {rule}")
    return value


# What reading a body raises when its encoding is corrupt or its sender has gone.
UNREADABLE_BODY = (web.RequestPayloadError, ConnectionResetError)


async def read_body(request: web.Request) -> bytes:
    """The body, bounded by client_max_size (413 beyond; middleware.edge). One that
    cannot be read (a corrupt gzip or deflate encoding, a client gone mid-body) is
    the client's 400: anyone can send it, and as a 500 it would feed the 5xx alert."""
    try:
        return await request.read()
    except UNREADABLE_BODY:
        raise Problem("invalid-argument", "the request body could not be read") from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise Problem("unsupported-media-type", f"got {request.content_type or 'no content type'}")
    raw = await read_body(request)
    try:
        parsed = model.model_validate_json(raw)
    except ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors()):
            raise Problem("malformed-json", "the body could not be parsed as JSON") from None
        raise _validation_problem(error, "body") from None
    if b"\\u0000" in raw:
        refuse_nul(parsed.model_dump())
    return parsed


def _list_fields(model: type[BaseModel]) -> tuple[str, ...]:
    def is_list(annotation: Any) -> bool:
        return get_origin(annotation) is list or any(is_list(a) for a in get_args(annotation))

    return tuple(name for name, info in model.model_fields.items() if is_list(info.annotation))


def query_params(request: web.Request, lists: tuple[str, ...] = ()) -> dict[str, Any]:
    """The query as a dict: the parameters named in `lists` as lists of their values,
    any other given more than once refused. A first value silently taken would differ
    from what a signed request's signature covers (every value, in sorted order):
    `a=1&a=2` and `a=2&a=1` sign alike but would read differently."""
    query = request.rel_url.query
    raw: dict[str, Any] = {}
    for name in query:
        if name in raw:
            continue
        values = query.getall(name)
        if name in lists:
            raw[name] = values
        elif len(values) > 1:
            raise Problem("invalid-argument", f"query parameter {name!r} is given more than once")
        else:
            raw[name] = values[0]
    return raw


def parse_query(request: web.Request, model: type[M]) -> M:
    """The query validated against `model`; a parameter whose field is a list may be
    repeated (`?sku=A&sku=B`), any other may not."""
    try:
        return model.model_validate(query_params(request, _list_fields(model)))
    except ValidationError as error:
        raise _validation_problem(error, "query") from None


def bind(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of a route: parse input, call the route's handler, render output."""

    async def handle(request: web.Request) -> web.StreamResponse:
        reject_nul(request)
        payload: BaseModel | None = None
        if route.query is not None:
            payload = parse_query(request, route.query)
        elif request.rel_url.query:
            # A body route's too: `POST /v1/orders?dry_run=true` placed a real order.
            raise Problem("validation-failed", "this route takes no query parameters")
        if route.body is not None:
            payload = await parse_body(request, route.body)
        result = await route.handler(request, payload)
        if result is None:
            return web.Response(status=204)
        if isinstance(result, web.StreamResponse):
            return result
        # pydantic-core writes the JSON itself: no dict of dicts for json.dumps to walk.
        return web.Response(
            body=result.model_dump_json(exclude_none=True),
            status=route.status,
            content_type="application/json",
        )

    handle.__name__ = route.operation_id
    return handle
