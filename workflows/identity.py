"""Identity's workflows: registration, signing-key rotation, API-client revocation.

These are the identity calls that are processes rather than lookups: more
than one step that must all complete, or work that runs on a schedule. The
latency-critical calls (sign-in, refresh, introspection) are direct gRPC.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.identity import (
        AccountRef,
        ApiClientRevocation,
        IdentityActivities,
        RegisterAccountInput,
        RevokeApiClientInput,
        RevokeSessionInput,
        RotateSigningKeyInput,
        RotateSigningKeyResult,
    )
    from agora.emails import normalize
    from agora.text import storable
    from workers.identity.errors import INVALID_REGISTRATION
    from workers.identity.keys import new_kid

__all__ = [
    "ROTATION_SCHEDULE_ID",
    "TASK_QUEUE",
    "AccountRef",
    "ApiClientRevocation",
    "RegisterAccountInput",
    "RegisterAccountWorkflow",
    "RevokeApiClientInput",
    "RevokeApiClientWorkflow",
    "RotateSigningKeyInput",
    "RotateSigningKeyWorkflow",
    "RotationReport",
    "register_workflow_id",
    "revoke_api_client_workflow_id",
]

TASK_QUEUE = "agora-identity"
ROTATION_SCHEDULE_ID = "identity-signing-key-rotation"
STEP_TIMEOUT = timedelta(seconds=10)
# How long the next key is published before it signs: three of the gateway's
# periodic JWKS refreshes (gateway/jwks.py, every 60 s), so every gateway holds it
# before its first token and none meets an unknown kid (whose refetch is
# rate-floored against floods of made-up kids).
PUBLISH_AHEAD_S = 180
PUBLISH_AHEAD_PATCH = "publish-signing-key-ahead"
# Registrations whose email or display name PostgreSQL cannot store (a NUL, a lone
# surrogate) are refused up front. Asked only for such a registration, so every
# other history replays unchanged; one started before the check (its activity
# retrying) replays on the old path and ends when the activity refuses it.
REFUSE_UNSTORABLE_PATCH = "refuse-unstorable-registration-text"


def register_workflow_id(email: str) -> str:
    """One registration per email at a time: a second request while one runs is refused
    (409 `conflict`), and one after it finds the email taken (409 `email-taken`). A
    client whose first POST timed out signs in to learn its account id.

    Workflow ids are visible in clear (the UI, visibility queries), unlike payloads,
    so the id holds a digest of the email, never the email itself. The digest is of
    the normalized email (agora.emails), which for ASCII is `email.strip().lower()`:
    the ids of registrations started before normalization are unchanged.
    """
    # surrogatepass: an unstorable email still gets an id, and the workflow refuses it.
    digest = hashlib.sha256(normalize(email).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"register-{digest}"


def revoke_api_client_workflow_id(client_id: str) -> str:
    return f"revoke-api-client-{client_id}"


@workflow.defn(name="RegisterAccount")
class RegisterAccountWorkflow:
    @workflow.run
    async def run(self, data: RegisterAccountInput) -> AccountRef:
        _validate_registration(data)
        with _rejections_surface():
            return await workflow.execute_activity_method(
                IdentityActivities.create_account, data, start_to_close_timeout=STEP_TIMEOUT
            )


@contextmanager
def _rejections_surface() -> Iterator[None]:
    """Re-raise an activity's business rejection as the workflow's own failure.

    The starter (the gateway) then finds it at `WorkflowFailureError.cause`
    with its stable `type` (e.g. "EmailTaken"), not wrapped in an ActivityError.
    """
    try:
        yield
    except ActivityError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.non_retryable:
            raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from err
        raise


def _validate_registration(data: RegisterAccountInput) -> None:
    if "@" not in data.email or len(data.email) > 254:
        raise ApplicationError("invalid email", type=INVALID_REGISTRATION, non_retryable=True)
    if not data.password_hash.startswith("$argon2id$"):
        # Guards against a clear password ever being stored (or entering history twice).
        raise ApplicationError(
            "password_hash must be an argon2id hash", type=INVALID_REGISTRATION, non_retryable=True
        )
    unstorable = not (storable(data.email) and storable(data.display_name))
    if unstorable and workflow.patched(REFUSE_UNSTORABLE_PATCH):
        # PostgreSQL refuses such text: the insert would fail on every retry and keep
        # this email's workflow id (and so every later registration of it) busy.
        raise ApplicationError(
            "email and display_name must not contain NUL or unpaired surrogates",
            type=INVALID_REGISTRATION,
            non_retryable=True,
        )


@dataclass
class RotationReport:
    rotation: RotateSigningKeyResult
    pruned_kids: list[str]


@workflow.defn(name="RotateSigningKey")
class RotateSigningKeyWorkflow:
    """Publish a new key, wait `publish_ahead_s`, make it current (the previous one
    keeps verifying through its overlap), then prune.

    Run by the Temporal Schedule `identity-signing-key-rotation`; the kid is
    derived from the workflow's deterministic clock and uuid, so a retried
    activity creates the same key once.
    """

    @workflow.run
    async def run(self, publish_ahead_s: int = PUBLISH_AHEAD_S) -> RotationReport:
        kid = new_kid(workflow.now(), workflow.uuid4())
        if workflow.patched(PUBLISH_AHEAD_PATCH):
            await workflow.execute_activity_method(
                IdentityActivities.publish_signing_key,
                RotateSigningKeyInput(kid),
                start_to_close_timeout=STEP_TIMEOUT,
            )
            if publish_ahead_s > 0:
                await workflow.sleep(timedelta(seconds=publish_ahead_s))
        rotation = await workflow.execute_activity_method(
            IdentityActivities.rotate_signing_key,
            RotateSigningKeyInput(kid),
            start_to_close_timeout=STEP_TIMEOUT,
        )
        pruned = await workflow.execute_activity_method(
            IdentityActivities.prune_signing_keys, start_to_close_timeout=STEP_TIMEOUT
        )
        return RotationReport(rotation, pruned.kids)


@workflow.defn(name="RevokeApiClient")
class RevokeApiClientWorkflow:
    """Mark the client revoked (refusing new sign-ins), then revoke its live tokens in Redis.

    Both steps must happen; Temporal retries the second until Redis takes it.
    """

    @workflow.run
    async def run(self, data: RevokeApiClientInput) -> ApiClientRevocation:
        with _rejections_surface():
            revocation = await workflow.execute_activity_method(
                IdentityActivities.mark_api_client_revoked,
                data,
                start_to_close_timeout=STEP_TIMEOUT,
            )
        await workflow.execute_activity_method(
            IdentityActivities.revoke_session,
            RevokeSessionInput(sid=data.client_id),
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
        )
        return revocation
