"""Search's worker: the indexer of catalog and stock events, the search API and the
reindex workflow (`python -m workers search`).

The wiring lives in `wiring.py`, imported only when the service is built.
"""

from __future__ import annotations

from agora.service import Runtime, ServiceDefinition, ServiceParts


async def build(rt: Runtime) -> ServiceParts:
    from workers.search.wiring import build_parts

    return await build_parts(rt)


DEFINITION = ServiceDefinition(
    name="search", build=build, publishes_events=False, needs_postgres=False
)
