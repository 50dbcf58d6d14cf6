"""A signed request whose secret cannot be fetched is an outage to retry, not a 500;
one whose client identity refuses is that client's refusal, not a bad signature."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gateway.problems import Problem
from gateway.signatures import (
    REFUSAL_TTL_S,
    SECRET_TTL_S,
    SignedHeaders,
    SigningSecrets,
    verify_request,
)
from gateway.tokens import Principal

CLIENT = Principal(
    subject="0c6f7a52-2d8e-4b8e-9d4a-5b7f3c1e9a20",
    ptype="api_client",
    scopes=frozenset({"catalog:read"}),
    jti="j",
    sid="s",
    expires_at=2_000_000_000,
    kid="k",
)
SIGNED = SignedHeaders(timestamp="1795650000", nonce="n" * 16, signature="v1=00")


@pytest.mark.parametrize(
    "outage",
    [GRPCError(Status.UNAVAILABLE, "down"), ConnectionRefusedError(), TimeoutError()],
)
async def test_identity_unreachable_answers_503_with_retry_after(outage: Exception) -> None:
    async def fetch(client_id: str) -> str | None:
        raise outage

    with pytest.raises(Problem) as refused:
        await verify_request(
            make_mocked_request("GET", "/v1/products"), CLIENT, SigningSecrets(fetch), SIGNED
        )
    assert (refused.value.code, refused.value.headers["Retry-After"]) == (
        "dependency-unavailable",
        "1",
    )


class Identity:
    """The secret lookup as identity answers it: None while the client is refused."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self.asked = 0

    async def fetch(self, client_id: str) -> str | None:
        self.asked += 1
        return self.secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_refused_client_is_told_its_token_is_no_good_not_its_signature() -> None:
    refused = Identity(None)
    with pytest.raises(Problem) as answer:
        await verify_request(
            make_mocked_request("GET", "/v1/products"),
            CLIENT,
            SigningSecrets(refused.fetch),
            SIGNED,
        )
    assert answer.value.code == "token-revoked"
    assert 'error="invalid_token"' in answer.value.headers["WWW-Authenticate"]


async def test_a_refusal_is_cached_briefly_so_a_refused_client_costs_one_lookup() -> None:
    identity, clock = Identity(None), Clock()
    secrets = SigningSecrets(identity.fetch, clock=clock)
    assert await secrets.get(CLIENT.subject) is None
    clock.now += REFUSAL_TTL_S - 0.1
    assert await secrets.get(CLIENT.subject) is None
    assert identity.asked == 1


async def test_a_client_enabled_again_is_served_once_its_refusal_expires() -> None:
    identity, clock = Identity(None), Clock()
    secrets = SigningSecrets(identity.fetch, clock=clock)
    assert await secrets.get(CLIENT.subject) is None
    identity.secret = "s3cret"  # its owner was enabled again
    clock.now += REFUSAL_TTL_S
    assert await secrets.get(CLIENT.subject) == "s3cret"
    clock.now += SECRET_TTL_S - 0.1
    assert await secrets.get(CLIENT.subject) == "s3cret"
    assert identity.asked == 2
