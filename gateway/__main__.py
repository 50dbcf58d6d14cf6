"""`python -m gateway`: run the API gateway (aiohttp on uvloop) and its side port.

The public port is settings.ports["gateway"]; /healthz, /readyz and /metrics are
also on the side port settings.ports["gateway_side"], like every service.
"""

from __future__ import annotations

import logging

from agora import config
from agora.leave import run_and_leave
from agora.logs import setup_logging

log = logging.getLogger("gateway")


async def serve() -> None:
    # Imported once logging is JSON (main): a dependency missing from an image is one
    # line with the service (run_and_leave logs it "crashed"), not a bare traceback.
    from aiohttp import web

    from agora.process import StoppedStarting, bootstrap
    from agora.sideport import SidePort
    from gateway.app import build_app, close_gateway, create_gateway
    from gateway.health import readiness_checks

    settings = config.load(service="gateway")
    telemetry, stop = bootstrap(settings, "gateway")

    try:
        gw = await create_gateway(settings, stop=stop)
    except StoppedStarting:
        log.info("stopped while starting")
        telemetry.shutdown()
        return
    side = SidePort(settings.listen_host, settings.ports["gateway_side"])
    for name, check in readiness_checks(gw).items():
        side.add_check(name, check)
    await side.start()

    runner = web.AppRunner(build_app(gw), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.listen_host, settings.ports["gateway"], backlog=1024).start()
    side.started = True
    log.info("gateway listening", extra={"port": settings.ports["gateway"]})

    await stop.wait()
    log.info("shutting down")
    side.draining = True  # load balancers stop sending first, then in-flight requests finish
    await runner.cleanup()
    await close_gateway(gw)
    await side.stop()
    telemetry.shutdown()


def main() -> None:
    # Before the gateway's modules are imported and the settings read, so a missing
    # dependency or a setting refused is one JSON line, like the rest; `bootstrap`
    # sets logging up again at the configured level.
    setup_logging("gateway")
    import uvloop

    uvloop.run(serve())


if __name__ == "__main__":
    run_and_leave(main)
