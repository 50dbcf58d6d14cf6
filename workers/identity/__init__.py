"""Identity's worker wiring: accounts, tokens, signing keys, API clients."""

from __future__ import annotations

from activities.identity import IdentityActivities
from agora.service import Runtime, ServiceDefinition, ServiceParts
from workers.identity.api import IdentityApi
from workflows.identity import RegisterAccountWorkflow


async def build(rt: Runtime) -> ServiceParts:
    activities = IdentityActivities(rt.pool)
    return ServiceParts(
        grpc_handlers=[IdentityApi(rt.pool)],
        activities=[activities.create_account],
        workflows=[RegisterAccountWorkflow],
    )


DEFINITION = ServiceDefinition(name="identity", build=build)
