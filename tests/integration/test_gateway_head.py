"""HEAD answers as its GET does, without the body (RFC 9110), and is checked as its GET is.

curl -I, uptime checkers and load balancers send HEAD. It goes through the same
pipeline as the GET: the same token, the same scopes, the same rate-limit class.
"""

from __future__ import annotations

import pytest

from gateway.deps import Gateway
from tests.integration.gatewaykit import Api, bearer, no_upstream_call

pytestmark = pytest.mark.integration


async def test_head_of_a_public_route_is_its_get_without_the_body(api: Api) -> None:
    got = await api.client.get("/healthz")
    head = await api.client.head("/healthz")
    assert (head.status, got.status) == (200, 200)
    assert await head.read() == b""
    assert head.content_type == got.content_type


async def test_head_without_a_token_is_refused_as_its_get(gw: Gateway, api: Api) -> None:
    with no_upstream_call(gw):
        response = await api.client.head("/v1/me")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await response.read() == b""


async def test_head_needs_the_scopes_its_get_needs(gw: Gateway, api: Api) -> None:
    session = await api.new_session()  # a customer: no identity:admin
    with no_upstream_call(gw):
        response = await api.client.head(
            "/v1/admin/api-clients", headers=bearer(session["access_token"])
        )
    assert response.status == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


async def test_head_with_a_token_answers_as_its_get_in_its_rate_class(api: Api) -> None:
    session = await api.new_session()
    headers = bearer(session["access_token"])
    got = await api.client.get("/v1/me", headers=headers)
    head = await api.client.head("/v1/me", headers=headers)
    assert (head.status, got.status) == (200, 200), await got.text()
    assert await head.read() == b""
    assert head.content_type == got.content_type == "application/json"
    # Admitted in the GET's class (read): the same limit, from the same bucket.
    assert head.headers["RateLimit-Limit"] == got.headers["RateLimit-Limit"]
