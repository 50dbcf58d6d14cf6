"""The client's address behind the ingress.

Rate limits on public routes (sign-in, registration, token refresh) are per
client address. Behind an ingress every TCP peer is the ingress controller, so
without this all clients would share one bucket. `aiohttp_remotes`'
XForwardedStrict takes the client's address from X-Forwarded-For only when the
peer is a trusted proxy and the header holds exactly the hops configured (one:
the ingress sets it to the address it saw); anything else is refused, so a
client cannot pick its own bucket by sending the header itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp_remotes import XForwardedStrict

from gateway.problems import Problem

# Probes come from the kubelet, not through the ingress.
PROBE_PATHS = ("/healthz", "/readyz")


class _TrustedProxy(XForwardedStrict):
    async def raise_error(self, request: web.Request) -> NoReturn:
        raise Problem(
            "invalid-argument", "X-Forwarded-For must come from the trusted proxy, one address"
        )


def forwarded_for(trusted: Sequence[str]) -> list[Middleware]:
    """The middleware to put right after the edge's (empty when no proxy is trusted)."""
    if not trusted:
        return []
    return [_TrustedProxy([list(trusted)], white_paths=PROBE_PATHS).middleware]
