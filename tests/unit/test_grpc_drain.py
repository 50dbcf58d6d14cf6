"""A stopping service serves the calls in flight to their end before it closes."""

from __future__ import annotations

import asyncio

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


class Slow(CatalogServiceBase):
    async def get_product(self, message: GetProductRequest) -> GetProductResponse:
        await asyncio.sleep(0.5)
        return GetProductResponse(product=Product(sku=message.sku))


async def test_a_call_in_flight_when_the_service_stops_is_answered() -> None:
    # (On loopback without TLS: the drain is about the server's handlers, not mTLS.)
    server = Server([grpc._WithCallContext(Slow())])
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]
    channel = Channel("127.0.0.1", port)
    try:
        call = asyncio.create_task(
            CatalogServiceStub(channel).get_product(GetProductRequest(sku="A-1"))
        )
        for _ in range(500):  # until the server is handling it
            if grpc._in_flight:
                break
            await asyncio.sleep(0.01)
        await grpc.drain(server)
        answer = await asyncio.wait_for(call, 10)
        assert answer.product is not None and answer.product.sku == "A-1"
        # Closed now: a new connection is refused.
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        channel.close()
        await server.wait_closed()
