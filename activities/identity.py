"""Identity's activities: the write side of accounts, run by identity's worker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from agora import outbox
from contracts.agora.identity.v1 import AccountRegistered, Role

TOPIC = "identity.events"


@dataclass
class CreateAccountInput:
    account_id: str
    email: str
    display_name: str
    password_hash: str  # hashed at the edge: a clear password never enters workflow history
    roles: list[str] = field(default_factory=lambda: ["customer"])


@dataclass
class AccountRef:
    account_id: str
    created: bool


class IdentityActivities:
    """Holds identity's dependencies; each method is one idempotent activity."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @activity.defn(name="identity.create_account")
    async def create_account(self, data: CreateAccountInput) -> AccountRef:
        """Insert the account and its AccountRegistered event in one transaction.

        Idempotent by account_id (the workflow passes a stable one); another
        account with the same email is a non-retryable business rejection.
        """
        info = activity.info()
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await conn.fetchrow(
                "SELECT account_id FROM accounts WHERE account_id = $1 OR lower(email) = lower($2)",
                uuid.UUID(data.account_id),
                data.email,
            )
            if existing is not None:
                if str(existing["account_id"]) == data.account_id:
                    return AccountRef(data.account_id, created=False)
                raise ApplicationError(
                    "an account with this email exists", type="EmailTaken", non_retryable=True
                )
            await conn.execute(
                "INSERT INTO accounts (account_id, email, display_name, password_hash, roles)"
                " VALUES ($1, $2, $3, $4, $5)",
                uuid.UUID(data.account_id),
                data.email,
                data.display_name,
                data.password_hash,
                data.roles,
            )
            await outbox.append(
                conn,
                producer="identity",
                topic=TOPIC,
                aggregate_type="account",
                aggregate_id=data.account_id,
                payload=AccountRegistered(
                    account_id=data.account_id,
                    email=data.email,
                    roles=[Role.from_string(r.upper()) for r in data.roles],
                ),
                workflow=outbox.WorkflowRef(info.workflow_id or "", info.workflow_run_id or ""),
            )
        return AccountRef(data.account_id, created=True)
