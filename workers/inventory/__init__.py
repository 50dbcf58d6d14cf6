"""Inventory's worker: stock per sku, reservations with expiry (`python -m workers inventory`).

The wiring lives in `wiring.py` and is imported only when the service is
built: activities and workflows import inventory's domain modules from this
package, and importing the wiring eagerly here would make that circular.
"""

from __future__ import annotations

from agora.service import Runtime, ServiceDefinition, ServiceParts


async def build(rt: Runtime) -> ServiceParts:
    from workers.inventory.wiring import build_parts

    return await build_parts(rt)


DEFINITION = ServiceDefinition(name="inventory", build=build)
