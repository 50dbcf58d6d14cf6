"""Every 401 names its scheme (RFC 9110), and every staff token fails closed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from agora import scopes
from gateway import codec, middleware
from gateway.context import TIMING
from gateway.deps import GATEWAY
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


class Unreachable:
    """A verifier whose key set cannot be fetched: 503, the token may be good."""

    async def verify(self, token: str) -> None:
        raise Problem("dependency-unavailable", "keys cannot be fetched")


class Timing:
    def add(self, *_: object) -> None:
        pass


def _bearer_request() -> web.Request:
    app = web.Application()
    route = SimpleNamespace(auth=True, scopes=frozenset())
    app[GATEWAY] = SimpleNamespace(  # type: ignore[assignment]
        verifier=Unreachable(), routes=SimpleNamespace(lookup=lambda _: route)
    )
    request = make_mocked_request("GET", "/v1/me", headers={"Authorization": "Bearer t"}, app=app)
    request[TIMING] = Timing()
    return request


async def test_a_503_while_verifying_does_not_tell_the_client_its_token_is_invalid() -> None:
    # error="invalid_token" makes an RFC 6750 client drop a token that may be good.
    async def handler(_: web.Request) -> web.Response:
        raise AssertionError("not reached")

    for check in (
        lambda request: middleware.authenticate(request, handler),
        lambda request: codec.staff_principal(request, "t"),
    ):
        with pytest.raises(Problem) as raised:
            await check(_bearer_request())
        assert raised.value.status == 503
        assert "invalid_token" not in raised.value.headers.get("WWW-Authenticate", "")
