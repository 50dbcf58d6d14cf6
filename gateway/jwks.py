"""Identity's public signing keys, cached in memory and refetched on an unknown `kid`.

Identity publishes its next key several periodic refreshes before it signs with
it, and keeps previous keys in its JWKS for an overlap window, so a token the
gateway cannot match to a key is forged, or was signed by a key minted since the
last fetch (the first key of a fresh identity database, or a gateway that could
not reach identity for minutes). The second case is rare, so an unknown `kid`
triggers a refetch, but at most once per `refetch_floor_s`: a flood of tokens
with random `kid`s must not become a flood of calls to identity.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

log = logging.getLogger(__name__)

# Identity publishes a key workflows.identity.PUBLISH_AHEAD_S (several of these)
# before it signs with it.
PERIODIC_REFRESH_S = 60.0

JwksFetcher = Callable[[], Awaitable[list[dict[str, Any]]]]


def _usable(jwk: Mapping[str, Any]) -> bool:
    """Only Ed25519 signing keys: a key of another type or use is never trusted."""
    return (
        jwk.get("kty") == "OKP"
        and jwk.get("crv") == "Ed25519"
        and bool(jwk.get("kid"))
        and jwk.get("use", "sig") in ("", "sig")
        and "d" not in jwk
    )


class JwksCache:
    """kid -> public key; `get` is the synchronous hot path, `refresh` the slow one."""

    def __init__(
        self,
        fetch: JwksFetcher,
        *,
        refetch_floor_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._fetch = fetch
        self._floor = refetch_floor_s
        self._clock = clock
        self._keys: dict[str, OKPKey] = {}
        self._document: list[dict[str, Any]] = []
        self._attempted_at = -math.inf
        self._loaded = False
        # The last fetch failed (identity unreachable): an unknown kid may be a key
        # minted since, so a token signed by it is not refused as unknown (a 401 makes
        # clients drop a good token) but answered 503 (gateway/tokens.py).
        self.failing = False
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def loaded(self) -> bool:
        return self._loaded

    def get(self, kid: str) -> OKPKey | None:
        return self._keys.get(kid)

    def document(self) -> dict[str, list[dict[str, Any]]]:
        """The JWK set as served at /.well-known/jwks.json."""
        return {"keys": list(self._document)}

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the key set unless one was attempted within the floor; True if it fetched.
        While a fetch is under way, a caller waits for it: it may bring the key that
        caller is looking for (the tokens of a new key come in bursts)."""
        if not force and self._clock() - self._attempted_at < self._floor:
            if self._lock.locked():
                async with self._lock:
                    pass
            return False
        async with self._lock:
            # Another request may have refreshed while this one waited for the lock.
            if not force and self._clock() - self._attempted_at < self._floor:
                return False
            if not force:
                # Only fetches for an unknown kid count against the floor: the periodic
                # (forced) refresh taken a moment before a rotation must not make the
                # new key's first tokens wait out the floor with token-key-unknown.
                self._attempted_at = self._clock()
            self.fetches += 1
            try:
                jwks = await self._fetch()
            except Exception:
                log.warning(
                    "JWKS fetch failed; keeping %d cached keys", len(self._keys), exc_info=True
                )
                self.failing = True
                return False
            self.failing = False
            imported = _imported(jwks)
            self._keys = {jwk["kid"]: key for jwk, key in imported}
            self._document = [jwk for jwk, _ in imported]
            self._loaded = True
            return True

    async def run_periodic_refresh(self, interval_s: float = PERIODIC_REFRESH_S) -> None:
        """Drop keys identity retired and pick up new ones without waiting for an unknown kid."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh(force=True)
            except Exception:
                # One bad round must not end the refresh for good: the keys would go
                # stale, and every token of the next key would be refused.
                log.exception("JWKS refresh failed; trying again in %s s", interval_s)


def _imported(jwks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], OKPKey]]:
    """The usable keys, each with its import; one that cannot be imported is skipped,
    not allowed to fail the whole set (and with it every token of the good keys)."""
    imported = []
    for jwk in jwks:
        if not _usable(jwk):
            continue
        try:
            imported.append((dict(jwk), OKPKey.import_key(dict(jwk))))
        except (JoseError, ValueError):
            log.warning("JWKS key %r cannot be imported; skipping it", jwk.get("kid"))
    return imported
