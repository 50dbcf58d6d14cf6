"""The baseline: a bare aiohttp handler on uvloop, in its own process like the gateway.

`python -m bench.bare PORT`
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

from agora.leave import run_and_leave


async def hello(_: web.Request) -> web.Response:
    return web.json_response({"subject": "bare", "scopes": ["profile"]})


def main() -> None:
    app = web.Application()
    app.router.add_get("/v1/me", hello)
    app.router.add_get("/healthz", hello)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    run_and_leave(main)
