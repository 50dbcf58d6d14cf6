"""Identity's workflows: registration (with its follow-ups)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.identity import AccountRef, CreateAccountInput, IdentityActivities

TASK_QUEUE = "agora-identity"


def register_workflow_id(email: str) -> str:
    """One registration per email at a time: a retried request joins the running one."""
    return f"register-{email.lower()}"


@workflow.defn(name="RegisterAccount")
class RegisterAccountWorkflow:
    @workflow.run
    async def run(self, data: CreateAccountInput) -> AccountRef:
        return await workflow.execute_activity_method(
            IdentityActivities.create_account,
            data,
            start_to_close_timeout=timedelta(seconds=10),
        )
