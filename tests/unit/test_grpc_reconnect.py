"""A client moves to a new connection every MAX_CONNECTION_AGE_S, and the calls under
way on the old one still get their answers.

kube-proxy picks a backend pod per connection: with one connection for the life of a
process, the pods the autoscaler added to a service got none of its calls.
(On loopback without TLS: this is about the connections, not mTLS.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel
from grpclib.server import Server

from agora import grpc
from contracts.agora.catalog.v1 import (
    CatalogServiceBase,
    CatalogServiceStub,
    GetProductRequest,
    GetProductResponse,
    Product,
)


class Catalog(CatalogServiceBase):
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def get_product(self, message: GetProductRequest) -> GetProductResponse:
        if message.sku == "SLOW":
            await self.release.wait()
        return GetProductResponse(product=Product(sku=message.sku))


@pytest.fixture
async def catalog() -> AsyncIterator[tuple[Catalog, int]]:
    servicer = Catalog()
    server = Server([grpc._WithCallContext(servicer)])
    await server.start("127.0.0.1", 0)
    yield servicer, server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    servicer.release.set()
    server.close()
    await server.wait_closed()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every connection a channel opens."""
    opened: list[object] = []
    create = Channel._create_connection

    async def counted(self: Channel) -> object:
        protocol = await create(self)
        opened.append(protocol)
        return protocol

    monkeypatch.setattr(Channel, "_create_connection", counted)
    return opened


async def product(stub: CatalogServiceStub, sku: str) -> str:
    answer = await stub.get_product(GetProductRequest(sku=sku))
    assert answer.product is not None
    return answer.product.sku


async def test_calls_share_a_connection_until_it_is_old_then_move_to_a_new_one(
    catalog: tuple[Catalog, int], connections: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, port = catalog
    channel = grpc._RenewingChannel("127.0.0.1", port, ssl=None)
    stub = CatalogServiceStub(channel)
    try:
        assert [await product(stub, f"A-{n}") for n in range(3)] == ["A-0", "A-1", "A-2"]
        assert len(connections) == 1
        slow = asyncio.create_task(product(stub, "SLOW"))
        await asyncio.sleep(0.1)  # under way on the first connection
        monkeypatch.setattr(grpc, "MAX_CONNECTION_AGE_S", 0.0)
        channel._renew_at = 0.0  # it is old now
        assert await product(stub, "B-1") == "B-1"
        assert len(connections) == 2, "a new connection for the next call"
        servicer.release.set()
        assert await asyncio.wait_for(slow, 5) == "SLOW", "the old one finished its call"
    finally:
        channel.close()
    assert all(c.handler.connection_lost for c in connections), "close closes the draining too"


async def test_a_renewal_that_cannot_connect_keeps_the_working_connection(
    catalog: tuple[Catalog, int], connections: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service takes no new connection (no ready pod behind it, or its listener
    # closed first as a drain does) while the old connection still works: the call
    # goes on the old one, where the renewal made it fail.
    _, port = catalog
    channel = grpc._RenewingChannel("127.0.0.1", port, ssl=None)
    stub = CatalogServiceStub(channel)
    try:
        assert await product(stub, "A-1") == "A-1"
        refused = ConnectionRefusedError("no listener")

        async def cannot_connect(self: Channel) -> object:
            raise refused

        monkeypatch.setattr(Channel, "_create_connection", cannot_connect)
        channel._renew_at = 0.0  # it is old now
        assert await product(stub, "A-2") == "A-2"
        assert len(connections) == 1
        assert not channel._draining, "the working connection is not closed"
    finally:
        channel.close()
