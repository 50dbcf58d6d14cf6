"""The gateway's long-lived dependencies, shared by all requests of one process."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from agora.config import Settings
from agora.passwords import Passwords
from gateway.jwks import JwksCache
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import Admitter
from gateway.routing import RouteTable
from gateway.signatures import SigningSecrets
from gateway.tokens import TokenVerifier
from gateway.upstream import Upstream


@dataclass
class Gateway:
    settings: Settings
    redis: Redis
    admitter: Admitter
    jwks: JwksCache
    verifier: TokenVerifier
    secrets: SigningSecrets
    upstream: Upstream
    passwords: Passwords
    metrics: GatewayMetrics
    routes: RouteTable


GATEWAY = web.AppKey("gateway", Gateway)


def deps(request: web.Request) -> Gateway:
    return request.app[GATEWAY]
