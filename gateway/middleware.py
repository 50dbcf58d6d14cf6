"""The request pipeline, in order: edge -> authenticate -> admit -> route handler.

* edge: request id, trace span, deadline, Server-Timing, and every error turned
  into problem+json (a stack trace never leaves the process).
* authenticate: bearer JWT verified locally against the cached JWKS, then the
  route's scopes.
* admit: ONE Redis call doing revocation, rate limit and (for API clients) the
  nonce together, then the API client's request signature (one HMAC with a
  cached secret), so a revoked client is refused without a secret lookup.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import propagate, trace
from redis.exceptions import RedisError

from gateway.context import DEADLINE, PRINCIPAL, REQUEST_ID, TIMING, TRACE_ID, ServerTiming
from gateway.deps import deps
from gateway.forwarded import client_bucket
from gateway.problems import INVALID_TOKEN, RETRY_SOON, WWW_AUTHENTICATE, Problem, render
from gateway.ratelimit import Verdict, charge_refusal
from gateway.routing import Route
from gateway.signatures import signed_headers, verify_request

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")
tracer = trace.get_tracer("agora.gateway")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,128}")
MAX_TIMEOUT_MS = 30_000
# The methods a metric or span name carries; any other is "_OTHER", as OpenTelemetry's
# HTTP conventions have it: aiohttp's parser takes some forty (PROPFIND, MKCOL, ...),
# each of which would be a series of its own on every 404/405 a scanner is answered.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _from_http_exception(error: web.HTTPException) -> Problem:
    """aiohttp's own refusals (no route, wrong method, body over client_max_size)."""
    if isinstance(error, web.HTTPNotFound):
        return Problem("route-not-found")
    if isinstance(error, web.HTTPMethodNotAllowed):
        return Problem(
            "method-not-allowed",
            f"allowed: {', '.join(sorted(error.allowed_methods))}",
            headers={"Allow": ", ".join(sorted(error.allowed_methods))},
        )
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return Problem("body-too-large", error.text or "")
    return Problem("invalid-argument", error.reason)


def _deadline(request: web.Request, default_ms: int) -> float:
    raw = request.headers.get("X-Request-Timeout")
    timeout_ms = default_ms
    if raw is not None:
        # ASCII digits only: str.isdigit() accepts "²", which int() refuses (a 500, not a 400).
        valid = raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_TIMEOUT_MS))
        if not valid or not 0 < int(raw) <= MAX_TIMEOUT_MS:
            raise Problem("invalid-argument", f"X-Request-Timeout must be 1-{MAX_TIMEOUT_MS} ms")
        timeout_ms = int(raw)
    return time.monotonic() + timeout_ms / 1000


# A client's deadline below this (the p99 the platform promises) is the client's own
# doing when it runs out; a longer one that runs out is the platform's 504.
CLIENT_DEADLINE_FLOOR_MS = 200


def _shortened(request: web.Request) -> bool:
    """The request set X-Request-Timeout below what the platform promises to meet."""
    raw = request.headers.get("X-Request-Timeout", "")
    return raw.isascii() and raw.isdigit() and int(raw) < CLIENT_DEADLINE_FLOOR_MS


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Counted down in `finally`: an error, or the handler cancelled (the client gone,
    # shutdown), must not leave a request counted for good, the autoscaler reads it.
    in_flight = deps(request).metrics.in_flight
    in_flight.add(1)
    try:
        return await _answer(request, handler)
    finally:
        in_flight.add(-1)


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = deps(request)
    started = time.perf_counter()
    presented = request.headers.get("X-Request-Id", "")
    request_id = presented if _REQUEST_ID.fullmatch(presented) else uuid.uuid4().hex
    timing = ServerTiming()
    request[REQUEST_ID] = request_id
    request[TIMING] = timing
    route = gw.routes.lookup(request)
    if route is not None and route.max_body_bytes is not None:
        # Before anything reads the body: a signed request's check reads it first.
        request = request.clone(client_max_size=route.max_body_bytes)
    method = request.method if request.method in KNOWN_METHODS else "_OTHER"
    name = f"{method} {route.path if route else 'unmatched'}"
    with tracer.start_as_current_span(
        name, context=propagate.extract(request.headers), kind=trace.SpanKind.SERVER
    ) as span:
        context = span.get_span_context()
        trace_id = format(context.trace_id, "032x") if context.is_valid else request_id
        request[TRACE_ID] = trace_id
        try:
            request[DEADLINE] = _deadline(request, gw.settings.gateway_default_timeout_ms)
            response = await handler(request)
        except Problem as problem:
            response = _refusal(request, problem, trace_id)
        except web.HTTPException as error:
            response = _refusal(request, _from_http_exception(error), trace_id)
        except Exception as error:
            log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
            span.record_exception(error)
            response = _refusal(request, Problem("internal-error"), trace_id)
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            # A server's fault (OpenTelemetry's HTTP semantic conventions leave a 4xx
            # UNSET on a server span): what the tracing backends' error searches find.
            span.set_status(trace.StatusCode.ERROR, f"HTTP {response.status}")
        # One access line per request, inside the span so it carries the trace id
        # (`make logs TRACE=<id>` starts here); silence with the gateway.access logger.
        access_log.info(
            "request",
            extra={
                "method": request.method,
                "route": route.path if route else "unmatched",
                "status": response.status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "request_id": request_id,
            },
        )
    response.headers["X-Request-Id"] = request_id
    # The trace id on every answer (problem bodies also carry it): what a client
    # quotes to support and what `make logs TRACE=<id>` and Jaeger look up.
    response.headers["X-Trace-Id"] = trace_id
    timing.add("total", time.perf_counter() - started)
    response.headers["Server-Timing"] = timing.header()
    attributes = {"route": route.path if route else "unmatched", "method": method}
    counted: dict[str, str | int] = {**attributes, "status": response.status}
    if response.status == 504 and _shortened(request):
        # The client's own deadline, shorter than the platform's p99, ran out: not the
        # platform failing (ApiErrorRatioHigh leaves these out; any client could page).
        counted["deadline"] = "client"
    gw.metrics.requests.add(1, counted)
    gw.metrics.duration.record(time.perf_counter() - started, attributes)
    return response


def _refusal(request: web.Request, problem: Problem, trace_id: str) -> web.Response:
    deps(request).metrics.rejections.add(1, {"type": problem.code})
    return render(problem, instance=request.path, trace_id=trace_id)


async def _charge_refused_token(request: web.Request, route: Route) -> None:
    """A refused token, a revoked one, a replayed nonce and missing, malformed or
    stale signature headers cost the address a request of the route's class."""
    if route.route_class is None:
        return
    await charge_refusal(
        deps(request).admitter,
        route.route_class,
        client_bucket(request),
        limited=_limited_detail(route),
    )


def _limited_detail(route: Route) -> str:
    return f"limit for {route.route_class} routes exceeded; retry after the Retry-After delay"


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = deps(request)
    route = gw.routes.lookup(request)
    if route is None or not route.auth:
        return await handler(request)
    started = time.perf_counter()
    try:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Problem(
                "token-missing",
                "send Authorization: Bearer <access token>",
                headers={"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        try:
            principal = await gw.verifier.verify(token)
        except Problem as problem:
            if problem.status == 401:  # not a 503: the token may be good (gateway/tokens.py)
                problem.headers.setdefault("WWW-Authenticate", INVALID_TOKEN)
                await _charge_refused_token(request, route)
            raise
        missing = route.scopes - principal.scopes
        if missing:
            needed = " ".join(sorted(route.scopes))
            raise Problem(
                "insufficient-scope",
                f"this route requires scope {needed}",
                headers={
                    "WWW-Authenticate": f'{WWW_AUTHENTICATE}, error="insufficient_scope",'
                    f' scope="{needed}"'
                },
            )
        request[PRINCIPAL] = principal
    finally:
        request[TIMING].add("auth", time.perf_counter() - started)
    return await handler(request)


_REFUSED_UNCHARGED = frozenset({Verdict.JTI_REVOKED, Verdict.SID_REVOKED, Verdict.NONCE_REPLAYED})


@web.middleware
async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = deps(request)
    route = gw.routes.lookup(request)
    if route is None or route.route_class is None:
        return await handler(request)
    principal = request.get(PRINCIPAL)
    signed = None
    if principal is not None and principal.is_api_client:
        try:
            signed = signed_headers(request)
        except Problem:
            await _charge_refused_token(request, route)
            raise
    started = time.perf_counter()
    try:
        if principal is not None:
            admission = await gw.admitter.admit(
                route.route_class,
                principal.subject,
                jti=principal.jti,
                sid=principal.sid,
                nonce_key=signed.nonce_key(principal.subject) if signed else "",
            )
        else:
            admission = await gw.admitter.admit(route.route_class, client_bucket(request))
    except (RedisError, OSError) as error:
        # Signed requests need the nonce check, so API clients always fail closed.
        held = principal.scopes if principal is not None else frozenset()
        if route.fails_open_for(held) and signed is None:
            gw.metrics.redis_unavailable.add(1, {"mode": "open"})
            log.warning("Redis unavailable; admitting a read unchecked: %s", error)
            return await handler(request)
        gw.metrics.redis_unavailable.add(1, {"mode": "closed"})
        raise Problem(
            "dependency-unavailable",
            "revocation and rate-limit checks are unavailable; retry shortly",
            headers=RETRY_SOON,
        ) from None
    finally:
        request[TIMING].add("ratelimit", time.perf_counter() - started)
    if admission.verdict in _REFUSED_UNCHARGED:
        # The script refused these before any bucket: charged here, as a made-up
        # token is, or a revoked token (anyone's, after a sign-out) or a replayed
        # request could be sent without limit.
        await _charge_refused_token(request, route)
    if admission.verdict in (Verdict.JTI_REVOKED, Verdict.SID_REVOKED):
        raise Problem(
            "token-revoked",
            "this token's session was revoked"
            if admission.verdict is Verdict.SID_REVOKED
            else "this token was revoked",
            headers={"WWW-Authenticate": INVALID_TOKEN},
        )
    if admission.verdict is Verdict.RATE_LIMITED:
        raise Problem("rate-limited", _limited_detail(route), headers=admission.headers())
    if admission.verdict is Verdict.NONCE_REPLAYED:
        raise Problem("nonce-replayed", "this nonce was already used")
    if signed is not None and principal is not None:
        started = time.perf_counter()
        try:
            await verify_request(request, principal, gw.secrets, signed)
        finally:
            request[TIMING].add("signature", time.perf_counter() - started)
    try:
        response = await handler(request)
    except Problem as problem:
        # A refusal by another bucket (a sign-in's per-account limit) keeps its own
        # RateLimit headers: they describe the limit that refused.
        for name, value in admission.headers().items():
            problem.headers.setdefault(name, value)
        raise
    response.headers.update(admission.headers())
    return response
