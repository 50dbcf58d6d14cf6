"""An in-process gateway on a real port, served from its own thread and event loop.

Synchronous HTTP clients (schemathesis drives `requests`) block, so the gateway
cannot share their thread's loop. `running_gateway` (gatewaykit) is reused as is:
the same app, the same test-only signing key for minted tokens, and the real
services, Redis and Temporal behind it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agora.config import Settings
from gateway.deps import Gateway
from tests.integration.gatewaykit import TokenMinter, running_gateway


@dataclass
class LiveGateway:
    base_url: str
    gw: Gateway
    minter: TokenMinter
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the gateway's loop (e.g. to read its state) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextmanager
def live_gateway(settings: Settings, **overrides: Any) -> Iterator[LiveGateway]:
    minter = TokenMinter(settings)
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        try:
            async with running_gateway(settings, minter, **overrides) as (gw, client):
                box["live"] = LiveGateway(
                    str(client.make_url("")).rstrip("/"), gw, minter, asyncio.get_running_loop()
                )
                started.set()
                await stop.wait()
        except BaseException as error:
            box["error"] = error
            started.set()
            raise

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(90) or "error" in box:
        raise RuntimeError(f"the gateway did not start: {box.get('error')!r}")
    live: LiveGateway = box["live"]
    try:
        yield live
    finally:
        live.loop.call_soon_threadsafe(box["stop"].set)
        thread.join(30)
