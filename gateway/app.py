"""Assembly: dependencies from settings, the aiohttp application from dependencies."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from temporalio.service import RPCError

from agora import pki, rollover, temporal
from agora.config import DEFAULT_RATE_LIMITS, Settings
from agora.grpc import Channels
from agora.passwords import Passwords
from agora.process import starting
from contracts.agora.identity.v1 import (
    GetApiClientSigningSecretRequest,
    GetJwksRequest,
    IdentityServiceStub,
)
from gateway import middleware
from gateway.deps import GATEWAY, Gateway
from gateway.forwarded import forwarded_for
from gateway.jwks import JwksCache, JwksFetcher
from gateway.metrics import GatewayMetrics
from gateway.openapi import DOCS_HTML, OPENAPI, build_openapi, render_docs
from gateway.ratelimit import Admitter, Rate
from gateway.routes import all_routes
from gateway.routing import RouteTable
from gateway.signatures import SecretFetcher, SigningSecrets
from gateway.tokens import TokenVerifier
from gateway.upstream import Upstream

# Internal calls the gateway makes for itself (not for one request): short and fixed.
_INTERNAL_TIMEOUT_S = 2.0
# Set when the application's shutdown begins (aiohttp's on_shutdown, right after SIGTERM).
_SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)


def jwks_from_identity(identity: IdentityServiceStub) -> JwksFetcher:
    async def fetch() -> list[dict[str, Any]]:
        reply = await identity.get_jwks(GetJwksRequest(), timeout=_INTERNAL_TIMEOUT_S)
        return [{k: v for k, v in key.to_dict().items() if v} for key in reply.keys]

    return fetch


def secrets_from_identity(identity: IdentityServiceStub) -> SecretFetcher:
    async def fetch(client_id: str) -> str | None:
        try:
            reply = await identity.get_api_client_signing_secret(
                GetApiClientSigningSecretRequest(client_id=client_id),
                timeout=_INTERNAL_TIMEOUT_S,
            )
        except GRPCError as error:
            if error.status in (Status.NOT_FOUND, Status.FAILED_PRECONDITION):
                # Unknown, revoked, or its owner disabled: refused (and the refusal
                # cached briefly), not answered as a bad signature.
                return None
            raise
        return reply.secret or None

    return fetch


def rates_from(settings: Settings) -> dict[str, Rate]:
    # Every class has a rate: one left out of the settings keeps its default.
    limits = {**DEFAULT_RATE_LIMITS, **settings.rate_limits}
    return {name: Rate.parse(text) for name, text in limits.items()}


async def create_gateway(
    settings: Settings,
    *,
    jwks_fetch: JwksFetcher | None = None,
    stop: asyncio.Event | None = None,
) -> Gateway:
    """Open the gateway's clients. `jwks_fetch` replaces identity as the key source
    (tests); a `stop` set while Temporal is away raises StoppedStarting."""
    metrics = GatewayMetrics()
    redis = Redis.from_url(
        settings.redis_url,
        password=settings.redis_password or None,
        socket_timeout=settings.gateway_redis_timeout_ms / 1000,
        socket_connect_timeout=settings.gateway_redis_timeout_ms / 1000,
        retry=Retry(NoBackoff(), 0),
    )
    channels = Channels(settings, caller="gateway")
    # Retried through a Temporal frontend restart, as the services' start is.
    client = await starting(
        "temporal client",
        lambda: temporal.connect(settings),
        transient=(OSError, RPCError, RuntimeError),  # RuntimeError: a failed connect
        stop=stop,
    )
    upstream = Upstream(channels, client, metrics)
    jwks = JwksCache(jwks_fetch or jwks_from_identity(upstream.identity))
    return Gateway(
        settings=settings,
        redis=redis,
        admitter=Admitter(redis, rates_from(settings)),
        jwks=jwks,
        verifier=TokenVerifier(jwks, issuer=settings.jwt_issuer, audience=settings.jwt_audience),
        secrets=SigningSecrets(secrets_from_identity(upstream.identity)),
        upstream=upstream,
        passwords=Passwords.from_settings(settings),
        metrics=metrics,
        routes=RouteTable(all_routes()),
    )


async def close_gateway(gw: Gateway) -> None:
    gw.upstream.channels.close()
    await gw.redis.aclose()


def build_app(gw: Gateway) -> web.Application:
    app = web.Application(
        middlewares=[
            middleware.edge,
            *forwarded_for(gw.settings.gateway_trusted_proxies),
            middleware.authenticate,
            middleware.admit,
        ],
        client_max_size=gw.settings.gateway_max_body_bytes,
    )
    app[GATEWAY] = gw
    gw.routes.register(app)
    document = build_openapi(gw.routes.routes, gw.admitter.rates)
    app[OPENAPI] = document
    app[DOCS_HTML] = render_docs(document)
    app[_SHUTTING_DOWN] = asyncio.Event()
    app.on_shutdown.append(_shutting_down)
    app.on_response_prepare.append(_not_stored)
    app.cleanup_ctx.append(_background)
    return app


NOT_STORED = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def _not_stored(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer of a route whose answers carry credentials, whichever middleware or
    handler made it, is kept out of caches."""
    route = request.app[GATEWAY].routes.lookup(request)
    if route is not None and route.secret_answers:
        response.headers.update(NOT_STORED)


async def _shutting_down(app: web.Application) -> None:
    app[_SHUTTING_DOWN].set()


def _sigterm() -> None:
    """The gateway's stop event is `serve`'s (gateway/__main__.py): reached as Kubernetes does."""
    signal.raise_signal(signal.SIGTERM)


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Load the keys before the first request, keep them fresh while serving; with a
    Temporal client certificate, restart once it is renewed (agora/rollover.py)."""
    gw = app[GATEWAY]
    await gw.jwks.refresh(force=True)
    jobs = [
        asyncio.create_task(gw.jwks.run_periodic_refresh()),
        asyncio.create_task(pki.watch_certificates()),
    ]
    loaded = temporal.connected_tls_files(gw.upstream.temporal, gw.settings)
    if loaded:
        watcher = rollover.CertificateRollover(
            loaded,
            window_s=gw.settings.temporal_tls_rollover_s,
            shutdown=_sigterm,
            stopping=app[_SHUTTING_DOWN],
        )
        jobs.append(asyncio.create_task(watcher.run()))
    yield
    for job in jobs:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
