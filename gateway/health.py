"""Readiness of the gateway: what it needs to admit requests, shared by both ports."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.deps import Gateway

Check = Callable[[], Awaitable[bool]]


def readiness_checks(gw: Gateway) -> dict[str, Check]:
    """Not Redis: without it the gateway still serves reads (they fail open, writes
    are refused with 503 each), and a Redis failover taking every gateway out of
    rotation would turn that into no service at all."""

    async def jwks() -> bool:
        # Without keys every token fails; try to load them rather than just report.
        if not gw.jwks.loaded:
            await gw.jwks.refresh()
        return gw.jwks.loaded

    return {"jwks": jwks}


async def run_checks(checks: dict[str, Check], timeout_s: float = 2.0) -> dict[str, bool]:
    results: dict[str, bool] = {}
    for name, check in checks.items():
        try:
            results[name] = bool(await asyncio.wait_for(check(), timeout_s))
        except Exception:
            results[name] = False
    return results
