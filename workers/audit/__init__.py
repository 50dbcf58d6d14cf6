"""Audit's worker: the append-only, hash-chained log of every event (`python -m workers audit`).

It consumes every platform topic into the log, signs checkpoints of the chain
head on a Temporal Schedule, and answers queries, verification and exports over
gRPC. The wiring is imported only when the service is built (see identity).
"""

from __future__ import annotations

from agora.service import Runtime, ServiceDefinition, ServiceParts


async def build(rt: Runtime) -> ServiceParts:
    from workers.audit.wiring import build_parts

    return await build_parts(rt)


DEFINITION = ServiceDefinition(name="audit", build=build, publishes_events=False)
