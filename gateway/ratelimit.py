"""Admission in one Redis round trip: revocation, GCRA rate limit and nonce, in one Lua script.

One EVALSHA per request keeps the auth stage well under a millisecond: the
script checks the two revocation keys identity writes, applies GCRA (generic
cell rate algorithm: one timestamp per key, no background refill) to the
principal's bucket for the route class, and for a signed request records its
nonce with SET NX, before the rate limit (a refused request spends it too).
Redis's own clock (TIME) is used, so gateways with skewed clocks still share one
schedule.

Keys (an empty name skips that check):
    KEYS[1] identity:revoked:jti:<jti>      written by identity
    KEYS[2] identity:revoked:sid:<sid>      written by identity
    KEYS[3] gateway:rl:<route class>:<principal>
    KEYS[4] gateway:nonce:<client>:<nonce>
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from agora.config import parse_rate_limit
from agora.signing import NONCE_TTL_SECONDS
from gateway.problems import RETRY_SOON, Problem

ADMIT_LUA = """
local function exists(key)
  return key ~= '' and redis.call('EXISTS', key) == 1
end
if exists(KEYS[1]) then return {1, 0, 0, 0} end
if exists(KEYS[2]) then return {2, 0, 0, 0} end
-- The nonce is spent before the rate limit: spent only by an admitted request, a
-- captured one refused 429 could be sent again within the clock window.
if KEYS[4] ~= '' then
  if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', tonumber(ARGV[3])) then
    return {4, 0, 0, 0}
  end
end

local interval = tonumber(ARGV[1])   -- microseconds between two requests at the sustained rate
local burst = tonumber(ARGV[2])      -- requests allowed back to back
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[3]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  -- denied: {status, remaining, retry after us, reset us}
  return {3, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[3], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {0, math.floor((now - allow_at) / interval), 0, new_tat - now}
"""


class Verdict(IntEnum):
    ALLOWED = 0
    JTI_REVOKED = 1
    SID_REVOKED = 2
    RATE_LIMITED = 3
    NONCE_REPLAYED = 4


@dataclass(frozen=True)
class Rate:
    """A sustained rate plus a burst: "100/s burst 200" (burst defaults to the count)."""

    count: int
    period_s: int
    burst: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        # The grammar lives with the settings, so a bad AGORA_RATE_LIMIT_<CLASS> stops
        # every process at start (agora/config.py), not only the gateway.
        return cls(*parse_rate_limit(text))

    @property
    def interval_us(self) -> int:
        return max(1, self.period_s * 1_000_000 // self.count)


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    limit: int
    remaining: int
    retry_after_s: float
    reset_s: float

    def headers(self) -> dict[str, str]:
        """IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers)."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if self.verdict is Verdict.RATE_LIMITED:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


class Admitter:
    """Runs the admission script; raises redis errors for the caller's fail-open/closed policy."""

    def __init__(self, redis: Redis, rates: dict[str, Rate]):
        self._script: AsyncScript = redis.register_script(ADMIT_LUA)
        self._rates = rates

    @property
    def rates(self) -> dict[str, Rate]:
        return self._rates

    async def admit(
        self,
        route_class: str,
        principal: str,
        *,
        jti: str = "",
        sid: str = "",
        nonce_key: str = "",
    ) -> Admission:
        rate = self._rates[route_class]
        keys = [
            f"identity:revoked:jti:{jti}" if jti else "",
            f"identity:revoked:sid:{sid}" if sid else "",
            f"gateway:rl:{route_class}:{principal}",
            nonce_key,
        ]
        raw = await self._script(keys=keys, args=[rate.interval_us, rate.burst, NONCE_TTL_SECONDS])
        status, remaining, retry_us, reset_us = (int(x) for x in raw)
        return Admission(
            verdict=Verdict(status),
            limit=rate.burst,
            remaining=max(0, remaining),
            retry_after_s=retry_us / 1e6,
            reset_s=reset_us / 1e6,
        )


async def admit_or_refuse(
    admitter: Admitter,
    route_class: str,
    principal: str,
    *,
    unavailable: str,
    limited: str,
    jti: str = "",
    sid: str = "",
) -> Admission:
    """An admission outside the route pipeline (the codec's, a sign-in's own bucket):
    Redis down is 503 (these fail closed), a revoked token 401, over the limit 429."""
    try:
        admission = await admitter.admit(route_class, principal, jti=jti, sid=sid)
    except (RedisError, OSError):
        raise Problem("dependency-unavailable", unavailable, headers=RETRY_SOON) from None
    if admission.verdict in (Verdict.JTI_REVOKED, Verdict.SID_REVOKED):
        raise Problem("token-revoked", "this token was revoked")
    if admission.verdict is Verdict.RATE_LIMITED:
        raise Problem("rate-limited", limited, headers=admission.headers())
    return admission


async def charge_refusal(
    admitter: Admitter, route_class: str, bucket: str, *, limited: str
) -> None:
    """A request refused before its admission (a made-up or revoked token, a replayed
    nonce) costs its sender one request of `bucket` (the address's), as an
    unauthenticated request does: otherwise a flood of them, each a signature check,
    is never limited. Raises 429 once the bucket is empty; without Redis the refusal
    the caller is about to raise stands."""
    try:
        admission = await admitter.admit(route_class, bucket)
    except (RedisError, OSError):
        return
    if admission.verdict is Verdict.RATE_LIMITED:
        raise Problem("rate-limited", limited, headers=admission.headers())


def nonce_key(client_id: str, nonce: str) -> str:
    return f"gateway:nonce:{client_id}:{nonce}"
