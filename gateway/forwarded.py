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

import ipaddress
from collections.abc import Sequence
from typing import NoReturn

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp_remotes import XForwardedStrict

from gateway.problems import Problem

# One client's share of IPv6: a subscriber is usually given a whole /64, and each of
# its 2^64 addresses must not get a bucket of its own.
IPV6_CLIENT_PREFIX = 64

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


def client_bucket(request: web.Request) -> str:
    """The rate-limit key of an unauthenticated request: its client's address, an
    IPv6 one as its /64 (an IPv4-mapped one as the IPv4 address)."""
    remote = request.remote or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return f"ip:{remote}"  # not an IP (a Unix socket in tests): as it is
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        network = ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False)
        return f"ip:{network}"
    return f"ip:{address}"
