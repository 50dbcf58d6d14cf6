"""The stack counts the gateway up once it is ready (its signing keys loaded), not
merely alive: `make run` prints its URLs only then, and a later `make run` restarts a
gateway that never got them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agora import config
from stack.base import Context
from stack.component import _safe
from stack.platform import GatewayProcess


class _Gateway(BaseHTTPRequestHandler):
    """Alive (/healthz 200) on both ports; ready (/readyz) only once `ready` is set."""

    ready = False

    def do_GET(self) -> None:
        ok = self.path == "/healthz" or (self.path == "/readyz" and type(self).ready)
        self.send_response(200 if ok else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Context]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    port = str(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = config.load(
        {
            "AGORA_STATE_DIR": str(tmp_path),
            "AGORA_PORT_GATEWAY": port,
            "AGORA_PORT_GATEWAY_SIDE": port,
        }
    )
    try:
        yield Context(settings)
    finally:
        server.shutdown()
        _Gateway.ready = False


def test_a_gateway_alive_but_without_its_keys_is_not_up(gateway: Context) -> None:
    # As the stack asks (a probe that raises counts as not healthy).
    assert not _safe(GatewayProcess().healthy, gateway)
    _Gateway.ready = True
    assert _safe(GatewayProcess().healthy, gateway)
