"""The test harness refuses to start a service whose ports a leftover process holds."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from agora import config
from tests.integration.conftest import ServiceProcess


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def leftover() -> Iterator[tuple[int, int]]:
    """An old service's ports: a gRPC listener and a side port whose /readyz answers 200."""
    side = HTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=side.serve_forever, daemon=True)
    thread.start()
    grpc = socket.create_server(("127.0.0.1", 0))
    try:
        yield grpc.getsockname()[1], side.server_address[1]
    finally:
        grpc.close()
        side.shutdown()
        side.server_close()


def test_a_leftover_process_on_the_service_ports_is_named_not_mistaken_for_ready(
    leftover: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    grpc_port, side_port = leftover
    monkeypatch.setenv("AGORA_PORT_CATALOG_GRPC", str(grpc_port))
    monkeypatch.setenv("AGORA_PORT_CATALOG_SIDE", str(side_port))
    process = ServiceProcess(config.load(), "catalog")
    try:
        with pytest.raises(RuntimeError, match=rf"port {grpc_port} is taken by pid {os.getpid()}"):
            process.start(timeout=30)
    finally:
        process.kill()
    assert process.proc is None, "nothing was spawned"
