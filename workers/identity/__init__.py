"""Identity's worker: accounts, tokens, signing keys, API clients (`python -m workers identity`).

The wiring lives in `wiring.py` and is imported only when the service is
built: activities and workflows import identity's domain modules from this
package, and importing the wiring eagerly here would make that circular.
"""

from __future__ import annotations

from agora.service import Runtime, ServiceDefinition, ServiceParts


async def build(rt: Runtime) -> ServiceParts:
    from workers.identity.wiring import build_parts

    return await build_parts(rt)


DEFINITION = ServiceDefinition(name="identity", build=build, needs_redis=True)
