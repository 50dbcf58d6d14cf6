"""Temporal stores workflow payloads encrypted: raw history holds no customer PII."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client

from agora import temporal
from agora.config import Settings
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
