"""A request frame that is not a valid protobuf message is the caller's error.

grpclib decodes the request inside the handler's task, so a parser error was a
handler crash: UNKNOWN, counted as a server fault. `agora.grpc.RequestCodec` refuses
it with INVALID_ARGUMENT before the servicer runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.proto import ProtoCodec

from agora import grpc
from contracts.agora.identity.v1 import (
    GetAccountRequest,
    GetAccountResponse,
    IdentityServiceBase,
)
from tests.unit.grpcserve import serving

METHOD = "/agora.identity.v1.IdentityService/GetAccount"


class RawBytes(ProtoCodec):
    """A client codec that sends the given bytes as the request, as a broken peer could."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)


class Recording(IdentityServiceBase):
    def __init__(self) -> None:
        self.seen: list[GetAccountRequest] = []

    async def get_account(self, message: GetAccountRequest) -> GetAccountResponse:
        self.seen.append(message)
        return GetAccountResponse()


@pytest.fixture
def servicer() -> Recording:
    return Recording()


@pytest.fixture
async def channel(servicer: Recording) -> AsyncIterator[Channel]:
    async with serving(servicer, codec=grpc.RequestCodec(), client_codec=RawBytes()) as client:
        yield client


async def call(channel: Channel, body: bytes) -> GetAccountResponse:
    method = channel.request(METHOD, Cardinality.UNARY_UNARY, bytes, GetAccountResponse)
    async with method as stream:
        await stream.send_message(body, end=True)
        response: GetAccountResponse = await stream.recv_message()
        return response


@pytest.mark.parametrize(
    "body",
    [b"\x0a\x80", b"\x08\xff\xff", b"\xff" * 11],
    ids=["length-cut-short", "unterminated-varint", "overlong-varint"],
)
async def test_an_undecodable_request_is_invalid_argument_and_reaches_no_handler(
    channel: Channel, servicer: Recording, body: bytes
) -> None:
    with pytest.raises(GRPCError) as refused:
        await call(channel, body)
    assert refused.value.status == Status.INVALID_ARGUMENT
    assert refused.value.message is not None
    assert "not a valid GetAccountRequest message" in refused.value.message
    assert servicer.seen == []


async def test_a_well_formed_request_is_decoded_as_before(
    channel: Channel, servicer: Recording
) -> None:
    await call(channel, bytes(GetAccountRequest(account_id="a-1")))
    assert [m.account_id for m in servicer.seen] == ["a-1"]
