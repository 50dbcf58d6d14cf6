"""The side port's readiness: every check must pass, and none of them is traced."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from agora.sideport import SidePort


async def _ready(side: SidePort) -> tuple[int, dict[str, object]]:
    app = side.app()
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/readyz")
        return response.status, await response.json()


async def test_readiness_checks_run_untraced_and_each_must_pass() -> None:
    traced: list[bool] = []

    async def database() -> bool:
        traced.append(is_instrumentation_enabled())
        return True

    async def cache() -> bool:
        traced.append(is_instrumentation_enabled())
        raise ConnectionError("down")

    side = SidePort("127.0.0.1", 0)
    side.started = True
    side.add_check("postgres", database)
    assert await _ready(side) == (200, {"status": "ready", "checks": {"postgres": True}})
    side.add_check("redis", cache)
    status, body = await _ready(side)
    assert (status, body["checks"]) == (503, {"postgres": True, "redis": False})
    # Probed every few seconds: traced, each probe's SELECT 1 was a trace of its own.
    assert traced == [False, False, False]
