"""Verification of signed requests from API clients (scheme in agora/signing.py).

The HMAC key is the client's secret, which only identity holds (encrypted). The
gateway asks identity for it over mTLS (identity answers only to the gateway's
certificate) and keeps it in memory for a minute, so signing costs one HMAC per
request and a revoked client's secret leaves memory soon after. A refusal (no such
active client) is kept for a few seconds only: enough that a refused client's
requests do not each cost a call to identity, short enough that a client whose
owner is enabled again is served again soon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from grpclib.exceptions import GRPCError, StreamTerminatedError

from agora import signing
from gateway.problems import INVALID_TOKEN, RETRY_SOON, Problem
from gateway.ratelimit import nonce_key
from gateway.routing import read_body
from gateway.tokens import Principal

SecretFetcher = Callable[[str], Awaitable[str | None]]

SECRET_TTL_S = 60.0
# A refusal is kept briefly: an owner enabled again is served again within seconds.
REFUSAL_TTL_S = 5.0


class SigningSecrets:
    """client id -> secret, cached for `ttl_s`; a fetched None means no such active
    client (unknown, revoked, or its owner disabled) and is cached for `refusal_ttl_s`."""

    MAX_ENTRIES = 10_000

    def __init__(
        self,
        fetch: SecretFetcher,
        *,
        ttl_s: float = SECRET_TTL_S,
        refusal_ttl_s: float = REFUSAL_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._fetch = fetch
        self._ttl = ttl_s
        self._refusal_ttl = refusal_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._inflight: dict[str, asyncio.Future[str | None]] = {}
        self.fetches = 0

    async def get(self, client_id: str) -> str | None:
        hit = self._cache.get(client_id)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        # One fetch per client at a time, however many requests are waiting for it.
        pending = self._inflight.get(client_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._inflight[client_id] = future
        self.fetches += 1
        try:
            secret = await self._fetch(client_id)
            future.set_result(secret)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # consumed here; waiters get it from the shield
            raise
        finally:
            del self._inflight[client_id]
        self._remember(client_id, secret)
        return secret

    def _remember(self, client_id: str, secret: str | None) -> None:
        if len(self._cache) >= self.MAX_ENTRIES:
            self._cache.clear()
        ttl = self._ttl if secret is not None else self._refusal_ttl
        self._cache[client_id] = (self._clock() + ttl, secret)

    def forget(self, client_id: str) -> None:
        self._cache.pop(client_id, None)


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    timestamp: str
    nonce: str
    signature: str

    def nonce_key(self, client_id: str) -> str:
        return nonce_key(client_id, self.nonce)


def signed_headers(request: web.Request) -> SignedHeaders:
    """The cheap checks (presence, shape, clock window), before any Redis or secret lookup."""
    try:
        return SignedHeaders(*signing.check_headers(request.headers))
    except signing.SignatureError as error:
        raise Problem(error.code, error.detail) from None


async def verify_request(
    request: web.Request, principal: Principal, secrets: SigningSecrets, signed: SignedHeaders
) -> None:
    """The HMAC check, after admission: a revoked client is refused without a secret lookup."""
    body = await read_body(request) if request.body_exists else b""
    secret = await _active_client_secret(secrets, principal.subject)
    if not signing.verify(
        secret,
        request.method,
        request.rel_url.raw_path,  # as sent, percent-encoded: what the client signed
        request.rel_url.query.items(),
        body,
        signed.timestamp,
        signed.nonce,
        signed.signature,
    ):
        raise Problem("signature-invalid")


async def _active_client_secret(secrets: SigningSecrets, client_id: str) -> str:
    """The client's signing secret; a Problem when identity cannot be asked or refuses it."""
    try:
        secret = await secrets.get(client_id)
    except (GRPCError, StreamTerminatedError, OSError, TimeoutError):
        # Identity is down or slow: the signature cannot be checked, so the request is
        # refused, as an outage to retry (not a 500, not a bad signature).
        raise Problem(
            "dependency-unavailable",
            "the API client's signing secret cannot be checked; retry shortly",
            headers=RETRY_SOON,
        ) from None
    if secret is None:
        # Not a bad signature (it may well be right): identity no longer answers for the
        # client (unknown, revoked, owner disabled), so its token is no good, as a
        # revoked client's is.
        raise Problem(
            "token-revoked",
            "this API client is unknown or no longer active",
            headers={"WWW-Authenticate": INVALID_TOKEN},
        )
    return secret
