"""How long a session's revocation key lives in Redis."""

from __future__ import annotations

from workers.identity.sessions import sid_revocation_ttl_s
from workers.identity.tokens import LEEWAY_S


def test_a_revocation_outlives_the_sessions_refresh_tokens() -> None:
    assert sid_revocation_ttl_s(refresh_ttl_s=30 * 86400, access_ttl_s=900) == 30 * 86400


def test_a_revocation_outlives_the_sessions_access_tokens_when_they_live_longer() -> None:
    # Refresh 600 s, access 900 s: a key of 600 s let a signed-out session's access
    # token work again for its last five minutes.
    assert sid_revocation_ttl_s(refresh_ttl_s=600, access_ttl_s=900) > 900 + LEEWAY_S
