"""Identity's workflows in the time-skipping environment, with stand-in activities."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

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
from agora import text
from agora.temporal import workflow_runner
from gateway.jwks import PERIODIC_REFRESH_S
from workflows.identity import (
    PUBLISH_AHEAD_S,
    STEP_TIMEOUT,
    RegisterAccountWorkflow,
    RevokeApiClientWorkflow,
    RotateSigningKeyWorkflow,
)

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


calls: list[object] = []


@activity.defn(name="identity.create_account")
async def create_account(data: RegisterAccountInput) -> AccountRef:
    calls.append(("create_account", data.email))
    if not (text.storable(data.email) and text.storable(data.display_name)):
        # What the real activity does with PostgreSQL's refusal of such text.
        raise ApplicationError("unstorable", type="InvalidRegistration", non_retryable=True)
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


def worker(env: WorkflowEnvironment, queue: str) -> Worker:
    """A worker of identity's workflows and this module's activities on `queue`."""
    return Worker(
        env.client,
        task_queue=queue,
        workflows=WORKFLOWS,
        workflow_runner=workflow_runner(),
        activities=ACTIVITIES,
    )


HISTORIES = Path(__file__).resolve().parent.parent / "histories"


async def run(env: WorkflowEnvironment, workflow, *args, history: str = ""):
    """Run one workflow; AGORA_RECORD_HISTORIES=1 keeps a named run's history for the
    replay test (test_order_replay.py)."""
    queue = f"test-{uuid.uuid4()}"
    workflow_id = f"wf-{uuid.uuid4()}"
    async with worker(env, queue):
        result = await env.client.execute_workflow(
            workflow, *args, id=workflow_id, task_queue=queue
        )
    if history and os.environ.get("AGORA_RECORD_HISTORIES"):
        recorded = await env.client.get_workflow_handle(workflow_id).fetch_history()
        (HISTORIES / f"identity-{history}.json").write_text(recorded.to_json())
    return result


def registration(email: str, password_hash: str = HASH) -> RegisterAccountInput:
    return RegisterAccountInput(str(uuid.uuid4()), email, "Ann", password_hash)


async def test_register_account_creates_the_account(env: WorkflowEnvironment) -> None:
    data = registration("ann@example.test")
    created = await run(env, RegisterAccountWorkflow.run, data, history="register")
    assert created == AccountRef(data.account_id, True)


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


@pytest.mark.parametrize(
    ("email", "display_name"),
    [("a\x00b@example.test", "Ann"), ("ann@example.test", "A\x00nn"), ("\ud800@x.test", "Ann")],
)
async def test_text_postgres_cannot_store_is_refused_before_the_activity(
    env: WorkflowEnvironment, email: str, display_name: str
) -> None:
    calls.clear()
    data = RegisterAccountInput(str(uuid.uuid4()), email, display_name, HASH)
    with pytest.raises(WorkflowFailureError) as raised:
        await run(env, RegisterAccountWorkflow.run, data)
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidRegistration"
    assert cause.non_retryable and calls == []


@workflow.defn(name="RegisterAccount", sandboxed=False)
class RegisterAccountBeforeTheTextCheck:
    """RegisterAccount as it ran before unstorable text was refused up front."""

    @workflow.run
    async def run(self, data: RegisterAccountInput) -> AccountRef:
        try:
            return await workflow.execute_activity(
                "identity.create_account",
                data,
                start_to_close_timeout=STEP_TIMEOUT,
                result_type=AccountRef,
            )
        except Exception as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, ApplicationError) and cause.non_retryable:
                raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from err
            raise


async def test_a_registration_started_before_the_text_check_replays_on_its_old_path(
    env: WorkflowEnvironment,
) -> None:
    # Such a registration was stuck retrying its insert; it ends when the activity
    # refuses the text, and its history must still replay on the current code.
    queue = f"test-{uuid.uuid4()}"
    data = RegisterAccountInput(str(uuid.uuid4()), "a\x00b@example.test", "Ann", HASH)
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[RegisterAccountBeforeTheTextCheck],
        activities=ACTIVITIES,
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await env.client.start_workflow(
            "RegisterAccount", data, id=f"wf-{uuid.uuid4()}", task_queue=queue
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    history = await handle.fetch_history()
    result = await Replayer(
        workflows=[RegisterAccountWorkflow], workflow_runner=workflow_runner()
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_a_valid_registration_replays_on_the_current_code(env: WorkflowEnvironment) -> None:
    queue = f"test-{uuid.uuid4()}"
    async with worker(env, queue):
        handle = await env.client.start_workflow(
            RegisterAccountWorkflow.run,
            registration("ann@example.test"),
            id=f"wf-{uuid.uuid4()}",
            task_queue=queue,
        )
        await handle.result()
    history = await handle.fetch_history()
    markers = [e for e in history.events if e.HasField("marker_recorded_event_attributes")]
    assert markers == [], "a valid registration records no patch marker"
    result = await Replayer(
        workflows=[RegisterAccountWorkflow], workflow_runner=workflow_runner()
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None


async def test_rotation_publishes_the_key_waits_then_makes_it_current_and_prunes(
    env: WorkflowEnvironment,
) -> None:
    calls.clear()
    report = await run(env, RotateSigningKeyWorkflow.run, history="rotation")
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
    revocation = await run(
        env,
        RevokeApiClientWorkflow.run,
        RevokeApiClientInput("c-1", "admin"),
        history="revoke-api-client",
    )
    assert revocation.newly_revoked
    assert calls == [RevokeApiClientInput("c-1", "admin"), RevokeSessionInput("c-1")]
