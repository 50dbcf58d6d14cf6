"""Every 401 names its scheme (RFC 9110), and every staff token fails closed."""

from __future__ import annotations

import pytest

from agora import scopes
from gateway.problems import PROBLEM_TYPES, Problem, render
from gateway.routes import all_routes

STAFF = sorted(r for r in scopes.ROLE_SCOPES if r not in ("customer", "service"))


@pytest.mark.parametrize("code", sorted(c for c, t in PROBLEM_TYPES.items() if t.status == 401))
def test_every_401_carries_www_authenticate(code: str) -> None:
    response = render(Problem(code), instance="/v1/x", trace_id="t")
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_a_401_keeps_the_challenge_it_was_given() -> None:
    given = 'Bearer realm="agora", error="invalid_token"'
    response = render(
        Problem("token-expired", headers={"WWW-Authenticate": given}), instance="/", trace_id="t"
    )
    assert response.headers["WWW-Authenticate"] == given


@pytest.mark.parametrize("role", STAFF)
def test_no_staff_token_reads_unchecked_through_a_redis_outage(role: str) -> None:
    held = frozenset(scopes.ROLE_SCOPES[role])
    open_routes = [r for r in all_routes() if r.fails_open_for(held)]
    assert not open_routes, f"{role}: {[r.path for r in open_routes]}"
