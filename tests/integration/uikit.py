"""Helpers for the Temporal UI tests: a gateway on its configured port, browser set-up.

The Temporal dev server's UI was started pointed at `settings.ui_codec_endpoint`
(the gateway's port, `/codec`), so the browser test needs the gateway listening
exactly there: this runs the real gateway application in process on that port
(the test stack starts no gateway process). Its key source is identity's JWKS
plus one test key, as in gatewaykit, so tests can also mint tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from agora.config import REPO_ROOT, Settings
from agora.grpc import Channels
from contracts.agora.identity.v1 import IdentityServiceStub
from gateway.app import build_app, close_gateway, create_gateway, jwks_from_identity
from gateway.deps import Gateway
from tests.integration.gatewaykit import ROOMY_RATES, TokenMinter

BROWSER_DIR = REPO_ROOT / "tests" / "browser"
SCREENSHOTS = REPO_ROOT / "reports" / "screenshots"


@asynccontextmanager
async def gateway_on_its_port(
    settings: Settings, minter: TokenMinter
) -> AsyncIterator[tuple[Gateway, TestClient]]:
    settings = dataclasses.replace(settings, rate_limits=ROOMY_RATES)
    channels = Channels(settings, caller="gateway")
    from_identity = jwks_from_identity(IdentityServiceStub(channels.get("identity")))

    async def jwks_fetch() -> list[dict[str, Any]]:
        return [*await from_identity(), minter.public_jwk()]

    gw = await create_gateway(settings, jwks_fetch=jwks_fetch)
    server = TestServer(build_app(gw), host=settings.host, port=settings.ports["gateway"])
    client = TestClient(server)
    await client.start_server()
    deadline = time.monotonic() + 60
    while not gw.jwks.loaded and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        await gw.jwks.refresh(force=True)
    assert gw.jwks.loaded, "identity's signing keys not loaded in 60 s (is identity up?)"
    try:
        yield gw, client
    finally:
        await client.close()
        await close_gateway(gw)
        channels.close()


def install_browser() -> None:
    """Debian's chromium and the pinned playwright-core (npm ci); idempotent, says what it does."""
    result = subprocess.run(["bash", str(BROWSER_DIR / "install.sh")], text=True)
    if result.returncode != 0:
        raise RuntimeError("installing the browser test's dependencies failed (output above)")


def run_browser_script(
    env: dict[str, str], timeout_s: float = 240
) -> subprocess.CompletedProcess[str]:
    """Runs tests/browser/temporal_ui.mjs; its last stdout line is a JSON report."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["node", str(BROWSER_DIR / "temporal_ui.mjs")],
        cwd=BROWSER_DIR,
        env={**os.environ, "SCREENSHOT_DIR": str(SCREENSHOTS), **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def screenshot(name: str) -> Path:
    return SCREENSHOTS / name
