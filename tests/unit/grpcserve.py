"""A servicer behind agora.grpc's call wrapper on a loopback port, for unit tests.

No TLS: these tests are about the wrapper and grpclib's handling, not mTLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from grpclib.client import Channel
from grpclib.encoding.base import CodecBase
from grpclib.server import Server

from agora import grpc


@asynccontextmanager
async def serving(
    servicer: Any, *, codec: CodecBase | None = None, client_codec: CodecBase | None = None
) -> AsyncIterator[Channel]:
    """A channel to `servicer` served with `codec` (grpclib's protobuf codec when None)."""
    server = Server([grpc._WithCallContext(servicer)], codec=codec)
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    channel = Channel("127.0.0.1", port, codec=client_codec)
    try:
        yield channel
    finally:
        channel.close()
        server.close()
        await server.wait_closed()
