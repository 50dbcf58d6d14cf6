"""Identity's workflows in the time-skipping environment, with stand-in activities."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.identity import (
    AccountRef,
    ApiClientRevocation,
    PrunedKeys,
    RegisterAccountInput,
    RevokeApiClientInput,
    RevokeSessionInput,
    RotateSigningKeyInput,
    RotateSigningKeyResult,
)
from gateway.jwks import PERIODIC_REFRESH_S
from workflows.identity import (
    PUBLISH_AHEAD_S,
    RegisterAccountWorkflow,
    RevokeApiClientWorkflow,
    RotateSigningKeyWorkflow,
)

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


calls: list[object] = []


@activity.defn(name="identity.create_account")
async def create_account(data: RegisterAccountInput) -> AccountRef:
    if data.email.startswith("taken"):
        raise ApplicationError("exists", type="EmailTaken", non_retryable=True)
    return AccountRef(data.account_id, created=True)


scheduled: dict[str, datetime] = {}


@activity.defn(name="identity.publish_signing_key")
async def publish_signing_key(data: RotateSigningKeyInput) -> bool:
    calls.append(("publish", data))
    scheduled["publish"] = activity.info().current_attempt_scheduled_time
    return True


@activity.defn(name="identity.rotate_signing_key")
async def rotate_signing_key(data: RotateSigningKeyInput) -> RotateSigningKeyResult:
    calls.append(data)
    scheduled["rotate"] = activity.info().current_attempt_scheduled_time
    return RotateSigningKeyResult(data.kid, "old", "2030-01-01T00:00:00+00:00", True)


@activity.defn(name="identity.prune_signing_keys")
async def prune_signing_keys() -> PrunedKeys:
    calls.append("prune")
    return PrunedKeys(["older"])


@activity.defn(name="identity.mark_api_client_revoked")
async def mark_api_client_revoked(data: RevokeApiClientInput) -> ApiClientRevocation:
    calls.append(data)
    return ApiClientRevocation(data.client_id, "2030-01-01T00:00:00+00:00", True)


@activity.defn(name="identity.revoke_session")
async def revoke_session(data: RevokeSessionInput) -> None:
    calls.append(data)


ACTIVITIES = [
    create_account,
    publish_signing_key,
    rotate_signing_key,
    prune_signing_keys,
    mark_api_client_revoked,
    revoke_session,
]
WORKFLOWS = [RegisterAccountWorkflow, RotateSigningKeyWorkflow, RevokeApiClientWorkflow]


async def run(env: WorkflowEnvironment, workflow, *args):
    queue = f"test-{uuid.uuid4()}"
    async with Worker(env.client, task_queue=queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        return await env.client.execute_workflow(
            workflow, *args, id=f"wf-{uuid.uuid4()}", task_queue=queue
        )


def registration(email: str, password_hash: str = HASH) -> RegisterAccountInput:
    return RegisterAccountInput(str(uuid.uuid4()), email, "Ann", password_hash)


async def test_register_account_creates_the_account(env: WorkflowEnvironment) -> None:
    data = registration("ann@example.test")
    assert await run(env, RegisterAccountWorkflow.run, data) == AccountRef(data.account_id, True)


async def test_a_taken_email_surfaces_as_the_workflows_own_failure(
    env: WorkflowEnvironment,
) -> None:
    with pytest.raises(WorkflowFailureError) as raised:
        await run(env, RegisterAccountWorkflow.run, registration("taken@example.test"))
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "EmailTaken"


async def test_a_clear_password_is_refused_before_anything_is_stored(
    env: WorkflowEnvironment,
) -> None:
    with pytest.raises(WorkflowFailureError) as raised:
        await run(env, RegisterAccountWorkflow.run, registration("a@example.test", "hunter2"))
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidRegistration"


async def test_rotation_publishes_the_key_waits_then_makes_it_current_and_prunes(
    env: WorkflowEnvironment,
) -> None:
    calls.clear()
    report = await run(env, RotateSigningKeyWorkflow.run)
    published = calls[0]
    assert isinstance(published, tuple) and published[0] == "publish"
    assert calls[1:] == [published[1], "prune"]
    assert report.rotation.kid == published[1].kid and report.pruned_kids == ["older"]
    waited = scheduled["rotate"] - scheduled["publish"]
    assert waited >= timedelta(seconds=PUBLISH_AHEAD_S)


def test_the_next_key_is_published_across_several_gateway_jwks_refreshes() -> None:
    assert PUBLISH_AHEAD_S >= 2 * PERIODIC_REFRESH_S


async def test_revoking_an_api_client_marks_it_then_revokes_its_tokens(
    env: WorkflowEnvironment,
) -> None:
    calls.clear()
    revocation = await run(env, RevokeApiClientWorkflow.run, RevokeApiClientInput("c-1", "admin"))
    assert revocation.newly_revoked
    assert calls == [RevokeApiClientInput("c-1", "admin"), RevokeSessionInput("c-1")]
