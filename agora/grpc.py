"""grpclib servers and channels, always over mutual TLS with the platform CA."""

from __future__ import annotations

from collections.abc import Sequence

from grpclib._typing import IServable
from grpclib.client import Channel
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from agora.config import Settings
from agora.pki import client_context, server_context


async def start_server(settings: Settings, service: str, handlers: Sequence[IServable]) -> Server:
    """Serve `handlers` (plus gRPC health) on the service's port; refuses peers without a cert."""
    all_handlers: list[IServable] = [*handlers, Health()]
    server = Server(ServerReflection.extend(all_handlers))
    await server.start(
        settings.host,
        settings.grpc_port(service),
        ssl=server_context(settings.pki_dir, service),
    )
    return server


class Channels:
    """One pooled HTTP/2 channel per target service, shared by the whole process."""

    def __init__(self, settings: Settings, caller: str):
        self._settings = settings
        self._caller = caller
        self._channels: dict[str, Channel] = {}

    def get(self, target: str) -> Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = Channel(
                self._settings.host,
                self._settings.grpc_port(target),
                ssl=client_context(self._settings.pki_dir, self._caller),
            )
            self._channels[target] = channel
        return channel

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
