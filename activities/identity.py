"""Identity's activities: the write side run by identity's worker for its workflows.

Each activity is one idempotent step keyed by what the workflow passes (an
account id, a kid, a client id), so Temporal's retries never apply it twice.
No secret travels through them: passwords arrive already hashed, private keys
are generated inside the activity and stored sealed, API-client secrets never
enter a workflow at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import asyncpg
from temporalio import activity

from agora import outbox, scopes
from agora.errors import NotFound
from agora.temporal import rejection
from contracts.agora.identity.v1 import AccountRegistered, Role
from workers.identity import apiclients, keys
from workers.identity.errors import API_CLIENT_NOT_FOUND, EMAIL_TAKEN, INVALID_REGISTRATION
from workers.identity.kek import SecretBox
from workers.identity.sessions import Revocations

TOPIC = "identity.events"


@dataclass
class RegisterAccountInput:
    account_id: str
    email: str
    display_name: str
    password_hash: str  # argon2id, hashed at the edge: a clear password never enters history
    roles: list[str] = field(default_factory=lambda: ["customer"])


@dataclass
class AccountRef:
    account_id: str
    created: bool


@dataclass
class RotateSigningKeyInput:
    kid: str


@dataclass
class RotateSigningKeyResult:
    kid: str
    previous_kid: str
    previous_valid_until: str  # ISO 8601; "" when there was no previous key
    created: bool


@dataclass
class PrunedKeys:
    kids: list[str]


@dataclass
class RevokeApiClientInput:
    client_id: str
    revoked_by: str = ""


@dataclass
class ApiClientRevocation:
    client_id: str
    revoked_at: str  # ISO 8601
    newly_revoked: bool


@dataclass
class RevokeSessionInput:
    sid: str


_UNSTORABLE = "text must not contain NUL or unpaired surrogates"


@contextmanager
def _unstorable_text_refused(failure_type: str) -> Iterator[None]:
    """Text PostgreSQL cannot store (a NUL: SQLSTATE 22021; a lone surrogate, which
    asyncpg cannot encode as UTF-8) fails the same way on every retry: a
    non-retryable `failure_type`, not an activity retried for ever. The message
    does not quote the text."""
    try:
        yield
    except (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError):
        raise rejection(_UNSTORABLE, type=failure_type) from None
    except asyncpg.DataError as exc:
        if not isinstance(exc.__cause__, UnicodeError):
            raise
        raise rejection(_UNSTORABLE, type=failure_type) from None


def _workflow_ref() -> outbox.WorkflowRef:
    info = activity.info()
    return outbox.WorkflowRef(info.workflow_id or "", info.workflow_run_id or "")


class IdentityActivities:
    """Holds identity's dependencies; each method is one idempotent activity."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        box: SecretBox,
        revocations: Revocations,
        *,
        access_ttl_s: int,
    ):
        self.pool = pool
        self.box = box
        self.revocations = revocations
        self.key_overlap = keys.retired_key_overlap(access_ttl_s)

    @activity.defn(name="identity.create_account")
    async def create_account(self, data: RegisterAccountInput) -> AccountRef:
        """Insert the account and its AccountRegistered event in one transaction.

        Idempotent by account_id (the workflow passes a stable one); another
        account with the same email is a non-retryable business rejection, and so
        is text the database cannot store (the workflow refuses it first; this is
        for a registration started before it did).
        """
        unknown = sorted(set(data.roles) - set(scopes.ROLE_SCOPES))
        if unknown or not data.roles:
            # Role.from_string would raise a ValueError on every retry, for good.
            raise rejection(
                f"unknown roles {unknown[:5]!r}" if unknown else "an account needs a role",
                type=INVALID_REGISTRATION,
            )
        with _unstorable_text_refused(INVALID_REGISTRATION):
            return await self._create_account(data)

    async def _create_account(self, data: RegisterAccountInput) -> AccountRef:
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await conn.fetchrow(
                "SELECT account_id FROM accounts WHERE account_id = $1 OR lower(email) = lower($2)",
                uuid.UUID(data.account_id),
                data.email,
            )
            if existing is not None:
                if str(existing["account_id"]) == data.account_id:
                    return AccountRef(data.account_id, created=False)
                raise rejection("an account with this email exists", type=EMAIL_TAKEN)
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
                workflow=_workflow_ref(),
            )
        return AccountRef(data.account_id, created=True)

    @activity.defn(name="identity.publish_signing_key")
    async def publish_signing_key(self, data: RotateSigningKeyInput) -> bool:
        """Store key `kid` as the next key: in the JWK set, signing nothing yet
        (idempotent by kid; True if this call made it)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await keys.publish(conn, self.box, data.kid)

    @activity.defn(name="identity.rotate_signing_key")
    async def rotate_signing_key(self, data: RotateSigningKeyInput) -> RotateSigningKeyResult:
        """Make key `kid` current (made here unless published ahead), retire the previous
        one (idempotent by kid)."""
        async with self.pool.acquire() as conn, conn.transaction():
            outcome = await keys.rotate(
                conn, self.box, data.kid, overlap=self.key_overlap, workflow=_workflow_ref()
            )
        until = outcome.previous_valid_until
        return RotateSigningKeyResult(
            kid=outcome.kid,
            previous_kid=outcome.previous_kid,
            previous_valid_until=until.isoformat() if until else "",
            created=outcome.created,
        )

    @activity.defn(name="identity.prune_signing_keys")
    async def prune_signing_keys(self) -> PrunedKeys:
        """Drop retired keys whose overlap has ended (naturally idempotent)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return PrunedKeys(await keys.prune(conn))

    @activity.defn(name="identity.mark_api_client_revoked")
    async def mark_api_client_revoked(self, data: RevokeApiClientInput) -> ApiClientRevocation:
        """Mark the client revoked with its events; a second call changes nothing."""
        try:
            with _unstorable_text_refused("InvalidArgument"):
                async with self.pool.acquire() as conn, conn.transaction():
                    revoked_at, newly = await apiclients.mark_revoked(
                        conn, data.client_id, data.revoked_by, workflow=_workflow_ref()
                    )
        except NotFound as exc:
            raise rejection(exc.detail, type=API_CLIENT_NOT_FOUND) from None
        client_id = apiclients.canonical_id(data.client_id)
        return ApiClientRevocation(client_id, revoked_at.isoformat(), newly)

    @activity.defn(name="identity.revoke_session")
    async def revoke_session(self, data: RevokeSessionInput) -> None:
        """Publish a session's (or client's) revocation to Redis; setting it again is harmless.

        Under the canonical id, which the tokens carry: RevokeApiClient passes the
        client id as its starter spelled it (upper case, braces, `urn:uuid:`)."""
        await self.revocations.revoke_sid(apiclients.canonical_id(data.sid))
