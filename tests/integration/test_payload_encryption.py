"""Temporal stores workflow payloads encrypted: raw history holds no customer PII."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from agora import temporal
from agora.config import Settings
from tests.integration.waiting import eventually
from workflows.identity import (
    TASK_QUEUE,
    RegisterAccountInput,
    RegisterAccountWorkflow,
    register_workflow_id,
)

pytestmark = pytest.mark.integration


async def test_raw_history_of_a_registration_holds_no_email_in_clear(
    settings: Settings, identity_service
) -> None:
    from argon2 import PasswordHasher

    email = f"pii-{uuid.uuid4().hex[:8]}@example.com"
    client = await temporal.connect(settings)
    handle = await client.start_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(
            account_id=str(uuid.uuid4()),
            email=email,
            display_name="Private Person",
            password_hash=PasswordHasher().hash("a long enough password"),
        ),
        id=register_workflow_id(email),
        task_queue=TASK_QUEUE,
    )
    result = await handle.result()
    assert result.created

    # What an operator with direct access to Temporal (and no key) can read.
    raw = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    history = await raw.get_workflow_handle(handle.id).fetch_history()
    blob = history.to_json()
    assert email not in blob and "Private Person" not in blob
    payloads = [
        p
        for event in history.events
        for p in event.workflow_execution_started_event_attributes.input.payloads
    ]
    assert payloads and all(p.metadata["encoding"] == b"binary/encrypted" for p in payloads)
    # With the key ring, the same history reads in clear.
    decoded = await client.data_converter.decode(payloads, [RegisterAccountInput])
    assert decoded[0].email == email


async def test_a_failures_message_is_encrypted_too_and_reads_in_clear_with_the_key(
    settings: Settings, identity_service
) -> None:
    # An unexpected error's message may quote the data it failed on; here a known one
    # (the second registration of an email) shows where a message goes.
    from argon2 import PasswordHasher

    email = f"fail-{uuid.uuid4().hex[:8]}@example.com"
    client = await temporal.connect(settings)
    hashed = PasswordHasher().hash("a long enough password")

    async def register(workflow_id: str) -> object:
        return await client.execute_workflow(
            RegisterAccountWorkflow.run,
            RegisterAccountInput(str(uuid.uuid4()), email, "P", hashed),
            id=workflow_id,
            task_queue=TASK_QUEUE,
        )

    await register(register_workflow_id(email))
    again = f"{register_workflow_id(email)}-again"
    with pytest.raises(WorkflowFailureError) as failed:
        await register(again)
    message = "an account with this email exists"
    assert message in str(failed.value.cause)  # the key ring's client reads it
    raw = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    blob = (await raw.get_workflow_handle(again).fetch_history()).to_json()
    assert "EmailTaken" in blob  # the type stays in clear, for the UI's lists
    # Neither the message nor the stack trace (which names the activity's source file).
    assert message not in blob and "activities/identity.py" not in blob


async def test_a_workflow_started_in_clear_is_refused_by_the_workers(
    settings: Settings, identity_service
) -> None:
    # Anyone able to start a workflow in Temporal (the CLI, the web UI), without the key
    # ring, registered an account with the roles they chose: the workers took input in
    # clear as it was.
    from argon2 import PasswordHasher

    email = f"forged-{uuid.uuid4().hex[:8]}@example.com"
    raw = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    handle = await raw.start_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(
            str(uuid.uuid4()), email, "Forger", PasswordHasher().hash("x" * 16), roles=["admin"]
        ),
        id=register_workflow_id(email),
        task_queue=TASK_QUEUE,
    )
    try:

        async def refused() -> str | None:
            history = await handle.fetch_history()
            for event in history.events:
                if event.HasField("workflow_task_failed_event_attributes"):
                    return str(event.workflow_task_failed_event_attributes.failure)
            return None

        message = await eventually(refused, within=30, what="the workflow task refused")
        assert "Unencrypted" in message, message
        described = await handle.describe()
        assert described.status == WorkflowExecutionStatus.RUNNING  # never ran a step
        history = await handle.fetch_history()
        assert not [
            e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
        ]
    finally:
        await handle.terminate("test done")
