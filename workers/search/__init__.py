"""Search's worker: the indexer of catalog and stock events, the search API and the
reindex workflow (`python -m workers search`).

The wiring lives in `wiring.py`, imported only when the service is built.
"""

from __future__ import annotations

import elastic_transport

from agora.service import Runtime, ServiceDefinition, ServiceParts


async def build(rt: Runtime) -> ServiceParts:
    from workers.search.wiring import build_parts

    return await build_parts(rt)


DEFINITION = ServiceDefinition(
    name="search",
    build=build,
    publishes_events=False,
    needs_postgres=False,
    # Elasticsearch restarting while a pod starts: ridden out, not a crash-loop.
    start_transient=(elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout),
)
