"""Redis (Debian package): sessions, revocations, rate limits, caches; append-only file on."""

from __future__ import annotations

import shutil

import redis

from stack.base import ComponentError, Context
from stack.component import Component


class Redis(Component):
    name = "redis"
    ports = ("redis",)
    debian_packages = ("redis-server",)
    start_timeout = 30

    def installed(self, ctx: Context) -> bool:
        return shutil.which("redis-server") is not None

    def start(self, ctx: Context) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ComponentError(
                self.name, "redis-server not found", hint="apt-get install redis-server"
            )
        ctx.spawn(
            self.name,
            [
                binary,
                "--bind",
                ctx.settings.host,
                "--port",
                str(ctx.port("redis")),
                "--dir",
                str(ctx.data("redis")),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
        )

    def healthy(self, ctx: Context) -> bool:
        client = redis.Redis(host=ctx.settings.host, port=ctx.port("redis"), socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def urls(self, ctx: Context) -> dict[str, str]:
        return {"redis": ctx.settings.redis_url}
