"""A gRPC error message is bounded where the server builds it (agora/grpc.py `_wrap`).

The message travels percent-encoded in the grpc-message trailer; a caller's HTTP/2
client drops its whole connection on a header block over 64 KiB, failing every call
in flight on it, not only the one that failed (identity naming 3000 made-up scopes
in one refusal took the gateway's calls of every other user down with it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from grpclib import GRPCError
from grpclib.const import Status

from agora import grpc
from agora.errors import InvalidArgument
from contracts.agora.identity.v1 import (
    GetJwksRequest,
    GetJwksResponse,
    IdentityServiceBase,
    IdentityServiceStub,
    PasswordGrant,
    SignInRequest,
    SignInResponse,
)
from tests.unit.grpcserve import serving
from workers.identity.errors import InvalidScope

# Made-up, non-ASCII scope names: 6 bytes each "é" once percent-encoded.
MADE_UP_SCOPES = [f"ééé{i}" for i in range(3000)]
HUGE = "scope not granted: " + " ".join(MADE_UP_SCOPES)


def stream() -> Any:
    return SimpleNamespace(peer=SimpleNamespace(cert=lambda: None), metadata={})


async def refusal(raised: BaseException) -> GRPCError:
    async def handler(_: Any) -> None:
        raise raised

    with pytest.raises(GRPCError) as sent:
        await grpc._wrap(handler, "/agora.identity.v1.IdentityService/SignIn")(stream())
    return sent.value


async def test_a_huge_domain_error_detail_is_cut_to_the_bound() -> None:
    sent = await refusal(InvalidArgument(HUGE))
    assert sent.status == Status.INVALID_ARGUMENT
    assert sent.message is not None and len(sent.message) == grpc.MAX_MESSAGE_CHARS
    assert sent.message.startswith("scope not granted: ééé0 ééé1")
    assert sent.message.endswith("…")


async def test_a_huge_grpc_error_message_is_cut_and_keeps_its_status() -> None:
    sent = await refusal(GRPCError(Status.FAILED_PRECONDITION, HUGE, ["detail"]))
    assert (sent.status, sent.details) == (Status.FAILED_PRECONDITION, ["detail"])
    assert sent.message is not None and len(sent.message) == grpc.MAX_MESSAGE_CHARS


@pytest.mark.parametrize("message", ["no such product", "x" * grpc.MAX_MESSAGE_CHARS])
async def test_a_message_within_the_bound_is_sent_whole(message: str) -> None:
    assert (await refusal(InvalidArgument(message))).message == message
    assert (await refusal(GRPCError(Status.NOT_FOUND, message))).message == message


class Identity(IdentityServiceBase):
    """Refuses every sign-in naming each requested scope, as identity's narrowing does;
    holds every key request until the test lets it answer."""

    def __init__(self) -> None:
        self.jwks_asked = asyncio.Event()
        self.answer_jwks = asyncio.Event()

    async def sign_in(self, message: SignInRequest) -> SignInResponse:
        raise InvalidScope("scope not granted: " + " ".join(message.scopes))

    async def get_jwks(self, message: GetJwksRequest) -> GetJwksResponse:
        self.jwks_asked.set()
        await self.answer_jwks.wait()
        return GetJwksResponse()


@pytest.fixture
async def identity() -> AsyncIterator[tuple[Identity, IdentityServiceStub]]:
    servicer = Identity()
    async with serving(servicer) as channel:
        yield servicer, IdentityServiceStub(channel)


async def test_a_refusal_naming_thousands_of_scopes_fails_only_its_own_call(
    identity: tuple[Identity, IdentityServiceStub],
) -> None:
    servicer, stub = identity
    other_user = asyncio.ensure_future(stub.get_jwks(GetJwksRequest(), timeout=30))
    await asyncio.wait_for(servicer.jwks_asked.wait(), timeout=30)
    grant = PasswordGrant(email="me@example.com", password="correct-horse-1")
    with pytest.raises(GRPCError) as refused:
        await stub.sign_in(SignInRequest(password=grant, scopes=MADE_UP_SCOPES), timeout=30)
    assert refused.value.status == Status.INVALID_ARGUMENT
    servicer.answer_jwks.set()
    assert await other_user == GetJwksResponse()  # the shared connection still stands
