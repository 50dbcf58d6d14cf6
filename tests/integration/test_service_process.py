"""The test harness's services: recorded for `stack down`, never mistaken for a leftover."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from agora.config import Settings
from stack.base import Context
from tests.integration.conftest import ServiceProcess, Services, stack_runs


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


def on_ports(settings: Settings, grpc_port: int, side_port: int) -> Settings:
    """`settings` with catalog's ports moved (overrides in the environment get the offset)."""
    ports = {**settings.ports, "catalog_grpc": grpc_port, "catalog_side": side_port}
    return dataclasses.replace(settings, ports=ports)


def test_a_leftover_process_on_the_service_ports_is_named_not_mistaken_for_ready(
    leftover: tuple[int, int], settings: Settings
) -> None:
    process = ServiceProcess(on_ports(settings, *leftover), "catalog")
    grpc_port = leftover[0]
    try:
        with pytest.raises(RuntimeError, match=rf"port {grpc_port} is taken by pid {os.getpid()}"):
            process.start(timeout=30)
    finally:
        process.kill()
    assert process.proc is None, "nothing was spawned"


def test_a_ready_process_the_stack_has_no_record_of_is_not_reused(
    leftover: tuple[int, int], settings: Settings, tmp_path: Path
) -> None:
    # Its own state folder: no pid record of any catalog, whatever this session runs.
    elsewhere = dataclasses.replace(on_ports(settings, *leftover), state_dir=tmp_path)
    assert not stack_runs(elsewhere, "catalog")


def test_stack_down_stops_a_service_the_tests_started(
    settings: Settings, services: Services
) -> None:
    process = services("catalog")
    assert process.proc is not None
    ctx = Context(settings)
    assert ctx.running_pid("svc-catalog") == process.proc.pid, "recorded as the stack's own"
    down = subprocess.Popen(
        [sys.executable, "-m", "stack", "down", "svc-catalog"],
        env={**os.environ, "AGORA_PROFILE": settings.profile},
    )
    # Reaped here, its parent, so that `stack down` sees it gone; the next
    # services("catalog") starts a new one.
    process.proc.wait(timeout=90)
    assert down.wait(timeout=90) == 0
    assert ctx.running_pid("svc-catalog") is None
