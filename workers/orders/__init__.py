"""Orders' worker: the order saga and the order projection (`python -m workers orders`).

The wiring lives in `wiring.py`, imported only when the service is built.
"""

from __future__ import annotations

from agora.service import Runtime, ServiceDefinition, ServiceParts


async def build(rt: Runtime) -> ServiceParts:
    from workers.orders.wiring import build_parts

    return await build_parts(rt)


DEFINITION = ServiceDefinition(name="orders", build=build)
