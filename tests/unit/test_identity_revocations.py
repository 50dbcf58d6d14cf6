"""A revoked token's key outlives every verifier's acceptance of the token."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.tokens import LEEWAY_S as GATEWAY_LEEWAY_S
from workers.identity.sessions import Revocations
from workers.identity.tokens import LEEWAY_S as IDENTITY_LEEWAY_S


class RecordingRedis:
    """Records SETs (the unit under test only writes)."""

    def __init__(self) -> None:
        self.sets: dict[str, int] = {}

    async def set(self, key: str, value: Any, ex: int) -> None:
        self.sets[key] = ex


async def test_a_token_revoked_just_before_or_after_its_expiry_stays_revoked_past_the_leeway() -> (
    None
):
    redis = RecordingRedis()
    revocations = Revocations(redis, sid_ttl_s=3600)  # type: ignore[arg-type]
    now = dt.datetime.now(dt.UTC)
    await revocations.revoke_jti("soon", now + dt.timedelta(seconds=5))
    await revocations.revoke_jti("expired", now - dt.timedelta(seconds=10))
    longest = max(GATEWAY_LEEWAY_S, IDENTITY_LEEWAY_S)
    # Accepted until exp + leeway: the key lives at least that long from now.
    assert min(redis.sets.values()) >= longest - 10
    assert [k for k in redis.sets if k.endswith("soon")] and [
        k for k in redis.sets if k.endswith("expired")
    ]
    assert all(ttl >= 5 + longest - 1 for k, ttl in redis.sets.items() if k.endswith("soon"))
