"""Builds identity's parts from the shared runtime: the one place its pieces meet."""

from __future__ import annotations

from datetime import timedelta

from activities.identity import IdentityActivities
from agora.passwords import Passwords
from agora.service import Runtime, ServiceParts
from workers.identity import keys
from workers.identity.api import IdentityApi
from workers.identity.apiclients import ApiClients
from workers.identity.kek import SecretBox, load_kek
from workers.identity.schedule import ensure_rotation_schedule
from workers.identity.sessions import Revocations, Sessions, sid_revocation_ttl_s
from workers.identity.signin import TokenService
from workers.identity.tokens import TokenPolicy
from workflows.identity import (
    RegisterAccountWorkflow,
    RevokeApiClientWorkflow,
    RotateSigningKeyWorkflow,
)


async def build_parts(rt: Runtime) -> ServiceParts:
    settings = rt.settings
    box = SecretBox(load_kek(settings))
    overlap = keys.retired_key_overlap(settings.access_token_ttl_s)
    # Tokens must be issuable from the first request on a fresh database.
    await keys.ensure_current(rt.pool, box, overlap)
    await ensure_rotation_schedule(
        rt.temporal,
        timedelta(seconds=settings.signing_key_rotation_s),
        settings.task_queue("identity"),
    )

    revocations = Revocations(
        rt.redis,
        sid_ttl_s=sid_revocation_ttl_s(settings.refresh_token_ttl_s, settings.access_token_ttl_s),
    )
    key_ring = keys.KeyRing(rt.pool, box)
    clients = ApiClients(rt.pool, box)
    token_service = TokenService(
        rt.pool,
        key_ring,
        Sessions(
            revocations,
            refresh_ttl_s=settings.refresh_token_ttl_s,
            reuse_grace_s=settings.refresh_reuse_grace_s,
        ),
        clients,
        TokenPolicy(settings.jwt_issuer, settings.jwt_audience, settings.access_token_ttl_s),
        Passwords.from_settings(settings),
    )
    activities = IdentityActivities(
        rt.pool, box, revocations, access_ttl_s=settings.access_token_ttl_s
    )
    return ServiceParts(
        grpc_handlers=[IdentityApi(rt.pool, key_ring, token_service, clients)],
        activities=[
            activities.create_account,
            activities.rotate_signing_key,
            activities.prune_signing_keys,
            activities.publish_signing_key,
            activities.mark_api_client_revoked,
            activities.revoke_session,
        ],
        workflows=[RegisterAccountWorkflow, RotateSigningKeyWorkflow, RevokeApiClientWorkflow],
    )
