"""Payments' worker: intents through a PSP, double-entry ledger (`python -m workers payments`).

The wiring lives in `wiring.py` and is imported only when the service is
built, as for identity: activities import this package's domain modules.
"""

from __future__ import annotations

from agora.service import Runtime, ServiceDefinition, ServiceParts


async def build(rt: Runtime) -> ServiceParts:
    from workers.payments.wiring import build_parts

    return await build_parts(rt)


DEFINITION = ServiceDefinition(name="payments", build=build, needs_redis=True)
