"""Builds payments' parts from the shared runtime: the one place its pieces meet."""

from __future__ import annotations

from activities.payments import PaymentsActivities
from agora.service import Runtime, ServiceParts
from workers.payments.api import PaymentsApi
from workers.payments.intents import PaymentIntents
from workers.payments.psp_sim import RedisSimStore, SimulatedPsp


async def build_parts(rt: Runtime) -> ServiceParts:
    settings = rt.settings
    # The only PSP adapter so far; a real one would be chosen here from settings.
    psp = SimulatedPsp(
        RedisSimStore(rt.redis, rt.redis_prefix),
        slow_delay_s=settings.payments_psp_slow_delay_s,
        flaky_failures=settings.payments_psp_flaky_failures,
    )
    activities = PaymentsActivities(PaymentIntents(rt.pool, psp))
    return ServiceParts(
        grpc_handlers=[PaymentsApi(rt.pool)],
        activities=[
            activities.authorize,
            activities.capture,
            activities.void,
            activities.refund,
        ],
    )
