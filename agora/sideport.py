"""The side HTTP port of every process: /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.instrumentation.utils import suppress_instrumentation
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

ReadinessCheck = Callable[[], Awaitable[bool]]


class SidePort:
    """Liveness, readiness (every registered check passes) and Prometheus metrics."""

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.checks: dict[str, ReadinessCheck] = {}
        self.draining = False
        # Not ready until the process says every part (gRPC port, worker, consumers) is up.
        self.started = False
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not self.started:
            return web.json_response({"status": "starting"}, status=503)
        results = {}
        # Probed every few seconds with no request behind them: traced, each check's
        # `SELECT 1` or PING would be a trace of its own, crowding out real ones.
        with suppress_instrumentation():
            for name, check in self.checks.items():
                try:
                    results[name] = bool(await asyncio.wait_for(check(), timeout=2))
                except Exception:
                    results[name] = False
        ready = all(results.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": results},
            status=200 if ready else 503,
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
