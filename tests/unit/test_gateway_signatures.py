"""A signed request whose secret cannot be fetched is an outage to retry, not a 500."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from gateway.problems import Problem
from gateway.signatures import SignedHeaders, SigningSecrets, verify_request
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


async def test_an_unknown_client_is_a_bad_signature() -> None:
    async def fetch(client_id: str) -> str | None:
        return None

    with pytest.raises(Problem) as refused:
        await verify_request(
            make_mocked_request("GET", "/v1/products"), CLIENT, SigningSecrets(fetch), SIGNED
        )
    assert refused.value.code == "signature-invalid"
