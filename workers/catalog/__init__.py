"""Catalog's worker: products, prices, the read-through cache (`python -m workers catalog`).

The wiring lives in `wiring.py`, imported only when the service is built
(activities and workflows import this package's domain modules).
"""

from __future__ import annotations

from agora.service import Runtime, ServiceDefinition, ServiceParts


async def build(rt: Runtime) -> ServiceParts:
    from workers.catalog.wiring import build_parts

    return await build_parts(rt)


DEFINITION = ServiceDefinition(name="catalog", build=build)
