"""Identity against the real stack: the service process, its Postgres, Redis and Temporal.

Calls go over mTLS gRPC as the gateway makes them; writes that are workflows
are started on identity's task queue and run by the identity process itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from grpclib import GRPCError
from grpclib.const import Status
from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey
from joserfc.jws import extract_compact
from temporalio.client import Client, ScheduleActionStartWorkflow, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from activities.identity import IdentityActivities, RotateSigningKeyInput
from agora import emails
from agora.config import Settings
from agora.grpc import Channels
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.identity.v1 import (
    ClientCredentialsGrant,
    CreateApiClientRequest,
    GetApiClientSigningSecretRequest,
    GetJwksRequest,
    IdentityServiceStub,
    IntrospectRequest,
    ListApiClientsRequest,
    PasswordGrant,
    PrincipalType,
    RefreshRequest,
    RevocationReason,
    SignedIn,
    SignInRequest,
    SignOutRequest,
    Tokens,
)
from tests.integration.waiting import eventually
from workers.identity import keys
from workers.identity.errors import RefreshTokenReused
from workers.identity.kek import SecretBox, load_kek
from workers.identity.keys import ALG
from workers.identity.schedule import ensure_rotation_schedule, rotation_schedule
from workers.identity.sessions import (
    Revocations,
    Sessions,
    hash_refresh_token,
    revoked_sid_key,
)
from workers.identity.signin import TokenService
from workers.identity.tokens import TokenPolicy
from workflows.identity import (
    ROTATION_SCHEDULE_ID,
    AccountRef,
    RegisterAccountInput,
    RegisterAccountWorkflow,
    RevokeApiClientInput,
    RevokeApiClientWorkflow,
    register_workflow_id,
    revoke_api_client_workflow_id,
)

pytestmark = [
    pytest.mark.integration,
    # RFC 9864 deprecates the "EdDSA" name; the platform contract still uses it (keys.py).
    pytest.mark.filterwarnings("ignore:EdDSA is deprecated"),
]

PASSWORD = "correct horse battery staple"
TASK_QUEUE = "agora-identity"


# Fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def channels(settings: Settings, identity_service: Any) -> AsyncIterator[Channels]:
    pool = Channels(settings, caller="gateway")
    yield pool
    pool.close()


@pytest.fixture(scope="module")
async def identity(channels: Channels) -> IdentityServiceStub:
    return IdentityServiceStub(channels.get("identity"))


@pytest.fixture(scope="module")
async def temporal(settings: Settings) -> Client:
    from agora import temporal as platform_temporal

    return await platform_temporal.connect(settings)


@pytest.fixture(scope="module")
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.db_dsn("identity"), min_size=1, max_size=2)
    assert pool is not None
    yield pool
    await pool.close()


# Helpers --------------------------------------------------------------------


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.test"


async def register(
    temporal: Client,
    email: str,
    *,
    account_id: str | None = None,
    display_name: str = "Test User",
    hasher: PasswordHasher | None = None,
) -> AccountRef:
    """What the gateway does: hash with argon2id (off the loop), then run the workflow."""
    password_hash = await asyncio.to_thread((hasher or PasswordHasher()).hash, PASSWORD)
    return await temporal.execute_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(
            account_id=account_id or str(uuid.uuid4()),
            email=email,
            display_name=display_name,
            password_hash=password_hash,
        ),
        id=register_workflow_id(email),
        task_queue=TASK_QUEUE,
    )


async def sign_in(identity: IdentityServiceStub, email: str, password: str = PASSWORD) -> Tokens:
    response = await identity.sign_in(
        SignInRequest(password=PasswordGrant(email=email, password=password))
    )
    assert response.tokens is not None
    return response.tokens


async def jwks(identity: IdentityServiceStub) -> KeySet:
    response = await identity.get_jwks(GetJwksRequest())
    return KeySet(
        [
            OKPKey.import_key({"kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid})
            for k in response.keys
        ]
    )


def kid_of(token: str) -> str:
    return str(extract_compact(token.encode()).headers()["kid"])


async def active(identity: IdentityServiceStub, token: str) -> bool:
    return (await identity.introspect(IntrospectRequest(token=token))).active


async def status_of(call: Awaitable[Any]) -> Status:
    with pytest.raises(GRPCError) as raised:
        await call
    return raised.value.status


async def signed_in(identity: IdentityServiceStub, temporal: Client) -> Tokens:
    """A new account's first session."""
    email = new_email()
    await register(temporal, email)
    return await sign_in(identity, email)


async def refreshed(identity: IdentityServiceStub, tokens: Tokens) -> Tokens:
    """`tokens`' refresh token exchanged."""
    answer = (await identity.refresh(RefreshRequest(refresh_token=tokens.refresh_token))).tokens
    assert answer is not None
    return answer


# Accounts and tokens ----------------------------------------------------------


async def test_sign_in_returns_an_access_token_that_verifies_against_the_jwks(
    identity: IdentityServiceStub, temporal: Client, settings: Settings
) -> None:
    email = new_email()
    account = await register(temporal, email)
    assert account.created

    tokens = await sign_in(identity, email.upper())  # email matches case-insensitively

    decoded = jwt.decode(tokens.access_token, await jwks(identity), algorithms=[ALG])
    claims = decoded.claims
    assert decoded.header["alg"] == "EdDSA" and decoded.header["kid"]
    assert claims["iss"] == settings.jwt_issuer and claims["aud"] == settings.jwt_audience
    assert claims["sub"] == account.account_id and claims["ptype"] == "account"
    assert claims["scope"].split() == sorted(
        ["profile", "catalog:read", "orders:read", "orders:write"]
    )
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl_s
    assert claims["nbf"] == claims["iat"] and uuid.UUID(claims["jti"]) and uuid.UUID(claims["sid"])
    assert tokens.refresh_token and tokens.principal_type == PrincipalType.ACCOUNT
    introspection = await identity.introspect(IntrospectRequest(token=tokens.access_token))
    assert introspection.active and introspection.sid == claims["sid"]


async def test_sign_in_with_a_wrong_password_is_unauthenticated(
    identity: IdentityServiceStub, temporal: Client
) -> None:
    email = new_email()
    await register(temporal, email)
    assert await status_of(sign_in(identity, email, "wrong")) == Status.UNAUTHENTICATED
    assert await status_of(sign_in(identity, new_email())) == Status.UNAUTHENTICATED


async def test_sign_in_asking_for_a_scope_not_held_is_rejected(
    identity: IdentityServiceStub, temporal: Client
) -> None:
    email = new_email()
    await register(temporal, email)
    request = SignInRequest(
        password=PasswordGrant(email=email, password=PASSWORD), scopes=["identity:admin"]
    )
    assert await status_of(identity.sign_in(request)) == Status.INVALID_ARGUMENT
    narrowed = await identity.sign_in(
        SignInRequest(password=PasswordGrant(email=email, password=PASSWORD), scopes=["profile"])
    )
    assert narrowed.tokens is not None and narrowed.tokens.scopes == ["profile"]


async def test_registering_a_taken_email_fails_with_email_taken(temporal: Client) -> None:
    email = new_email()
    await register(temporal, email)
    with pytest.raises(WorkflowFailureError) as raised:
        await register(temporal, email.upper())
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "EmailTaken"
    assert cause.non_retryable
    # The activity's own failure: a business rejection (BENIGN), not a worker WARNING
    # with a traceback for every taken email.
    attempt = cause.__cause__
    assert isinstance(attempt, ActivityError), attempt
    assert isinstance(attempt.cause, ApplicationError)
    assert attempt.cause.category == ApplicationErrorCategory.BENIGN


async def test_registering_again_with_the_same_account_id_is_idempotent(temporal: Client) -> None:
    email, account_id = new_email(), str(uuid.uuid4())
    assert (await register(temporal, email, account_id=account_id)).created
    assert not (await register(temporal, email, account_id=account_id)).created


async def test_refresh_rotates_the_refresh_token(
    identity: IdentityServiceStub, temporal: Client
) -> None:
    email = new_email()
    await register(temporal, email)
    first = await sign_in(identity, email)

    second = (await identity.refresh(RefreshRequest(refresh_token=first.refresh_token))).tokens

    assert second is not None
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    assert await active(identity, second.access_token)
    third = (await identity.refresh(RefreshRequest(refresh_token=second.refresh_token))).tokens
    assert third is not None and third.refresh_token


async def test_reusing_a_refresh_token_revokes_the_whole_family(
    identity: IdentityServiceStub, temporal: Client, redis: aioredis.Redis
) -> None:
    first = await signed_in(identity, temporal)
    second = await refreshed(identity, first)
    sid = (await identity.introspect(IntrospectRequest(token=second.access_token))).sid
    # The legitimate holder got its answer and went on: a copy of `first` now is theft.
    third = await refreshed(identity, second)

    reuse = identity.refresh(RefreshRequest(refresh_token=first.refresh_token))
    assert await status_of(reuse) == Status.UNAUTHENTICATED

    assert await redis.exists(revoked_sid_key(sid))
    assert 0 < await redis.ttl(revoked_sid_key(sid))
    assert not await active(identity, first.access_token)
    assert not await active(identity, third.access_token)
    # The legitimate holder's newer refresh token is dead too: the family is gone.
    newer = identity.refresh(RefreshRequest(refresh_token=third.refresh_token))
    assert await status_of(newer) == Status.UNAUTHENTICATED


async def test_a_refresh_whose_answer_was_lost_can_be_sent_again_within_the_grace(
    identity: IdentityServiceStub, temporal: Client
) -> None:
    first = await signed_in(identity, temporal)
    lost = await refreshed(identity, first)  # the client never saw this answer
    again = await refreshed(identity, first)
    assert again.refresh_token != lost.refresh_token
    assert await active(identity, again.access_token)
    later = await refreshed(identity, again)
    # The answer the client lost is spent: whoever holds it revokes the session.
    stolen = identity.refresh(RefreshRequest(refresh_token=lost.refresh_token))
    assert await status_of(stolen) == Status.UNAUTHENTICATED
    assert not await active(identity, later.access_token)


async def test_a_refresh_token_sent_again_after_the_grace_revokes_the_family(
    identity: IdentityServiceStub, temporal: Client, db: asyncpg.Pool, settings: Settings
) -> None:
    first = await signed_in(identity, temporal)
    second = await refreshed(identity, first)
    await db.execute(
        "UPDATE refresh_tokens SET used_at = used_at - make_interval(secs => $2)"
        " WHERE token_hash = $1",
        hash_refresh_token(first.refresh_token),
        settings.refresh_reuse_grace_s + 1,
    )
    reuse = identity.refresh(RefreshRequest(refresh_token=first.refresh_token))
    assert await status_of(reuse) == Status.UNAUTHENTICATED
    assert not await active(identity, second.access_token)


async def test_a_copy_presented_while_the_successor_is_being_exchanged_revokes_the_family(
    identity: IdentityServiceStub,
    temporal: Client,
    db: asyncpg.Pool,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    # The client exchanges B (A's successor) while a thief presents A, within the
    # grace. The thief's exchange waits for the client's; once that commits, A's
    # successor is spent and A must revoke the family, not be granted the grace.
    first = await signed_in(identity, temporal)
    second = await refreshed(identity, first)
    sessions = Sessions(Revocations(redis, sid_ttl_s=3600), refresh_ttl_s=3600, reuse_grace_s=30)
    watcher = await asyncpg.connect(settings.db_dsn("identity"))
    try:
        async with db.acquire() as client, client.transaction():
            # The client's exchange of B, in flight: the family locked, B spent.
            await client.execute(
                "SELECT 1 FROM token_families WHERE family_id = (SELECT family_id"
                " FROM refresh_tokens WHERE token_hash = $1) FOR UPDATE",
                hash_refresh_token(second.refresh_token),
            )
            await client.execute(
                "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1",
                hash_refresh_token(second.refresh_token),
            )
            thief = asyncio.create_task(sessions.rotate(db, first.refresh_token))

            async def thief_waits() -> bool:
                # Waiting for the client's transaction, not any lock in the database.
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    client.get_server_pid(),
                )
                return bool(waiting) or thief.done()

            await eventually(thief_waits, what="the thief's exchange to wait", interval=0.05)
        with pytest.raises(RefreshTokenReused):
            await thief
    finally:
        await watcher.close()
    assert not await active(identity, second.access_token)


async def test_sign_out_revokes_the_session(
    identity: IdentityServiceStub, temporal: Client
) -> None:
    email = new_email()
    await register(temporal, email)
    tokens = await sign_in(identity, email)

    out = await identity.sign_out(SignOutRequest(refresh_token=tokens.refresh_token))

    assert not out.already_revoked
    assert not await active(identity, tokens.access_token)
    refresh = identity.refresh(RefreshRequest(refresh_token=tokens.refresh_token))
    assert await status_of(refresh) == Status.UNAUTHENTICATED
    again = await identity.sign_out(SignOutRequest(sid=out.sid))
    assert again.already_revoked and again.sid == out.sid


async def test_sign_out_with_an_access_token_revokes_its_session(
    identity: IdentityServiceStub, temporal: Client
) -> None:
    email = new_email()
    await register(temporal, email)
    tokens = await sign_in(identity, email)

    await identity.sign_out(SignOutRequest(access_token=tokens.access_token))

    assert not await active(identity, tokens.access_token)
    refresh = identity.refresh(RefreshRequest(refresh_token=tokens.refresh_token))
    assert await status_of(refresh) == Status.UNAUTHENTICATED


class FailsOnce:
    """A pool whose first connection is lost (a failover), then the real one."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.failed = pool, False

    def acquire(self) -> Any:
        if not self.failed:
            self.failed = True
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")
        return self.pool.acquire()


class CommitLostOnce:
    """A pool whose first transaction's commit is lost: rolled back, then an error."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.lost = pool, False

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn:
            yield conn if self.lost else _LosesItsCommit(conn, self)


class _LosesItsCommit:
    def __init__(self, conn: asyncpg.Connection, pool: CommitLostOnce) -> None:
        self.conn, self.pool = conn, pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        tx = self.conn.transaction()
        await tx.start()
        try:
            yield
        finally:
            await tx.rollback()
        self.pool.lost = True
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def token_service(
    pool: Any, db: asyncpg.Pool, redis: aioredis.Redis, settings: Settings
) -> TokenService:
    """Identity's TokenService in this process, on `pool` for its own transactions."""
    return TokenService(
        pool,
        keys.KeyRing(db, SecretBox(load_kek(settings))),
        Sessions(Revocations(redis, sid_ttl_s=3600), refresh_ttl_s=3600, reuse_grace_s=5),
        None,  # type: ignore[arg-type]  # (no API clients here)
        TokenPolicy(settings.jwt_issuer, settings.jwt_audience, settings.access_token_ttl_s),
    )


async def test_a_sign_out_that_fails_midway_revokes_nothing_so_it_can_be_retried(
    identity: IdentityServiceStub,
    temporal: Client,
    settings: Settings,
    db: asyncpg.Pool,
    redis: aioredis.Redis,
) -> None:
    # The gateway refuses a revoked access token at admission: had the failed sign-out
    # revoked the token alone, its retry would be refused 401 and the session would
    # live on, its refresh token renewing for 30 days.
    tokens = await signed_in(identity, temporal)
    service = token_service(FailsOnce(db), db, redis, settings)
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await service.sign_out(access_token=tokens.access_token)
    assert await active(identity, tokens.access_token), "half revoked: the retry is refused"

    out = await service.sign_out(access_token=tokens.access_token)
    assert not out.already_revoked
    assert not await active(identity, tokens.access_token)
    refresh = identity.refresh(RefreshRequest(refresh_token=tokens.refresh_token))
    assert await status_of(refresh) == Status.UNAUTHENTICATED


async def test_a_client_token_sign_out_whose_commit_is_lost_can_be_retried_to_its_event(
    identity: IdentityServiceStub,
    temporal: Client,
    settings: Settings,
    db: asyncpg.Pool,
    redis: aioredis.Redis,
) -> None:
    # Had Redis been written before the commit, the token would be revoked without
    # its TokenRevoked event, and the gateway would let no retry through to write it.
    owner = await register(temporal, new_email())
    client_id, grant = await created_client(identity, owner, ["catalog:read"])
    machine = await client_tokens(identity, grant)
    service = token_service(CommitLostOnce(db), db, redis, settings)
    with pytest.raises(asyncpg.ConnectionDoesNotExistError):
        await service.sign_out(access_token=machine.access_token)
    assert await active(identity, machine.access_token), "revoked, its event lost"
    assert await revoked_events(db, client_id) == 0

    out = await service.sign_out(access_token=machine.access_token)
    assert not out.already_revoked
    assert not await active(identity, machine.access_token)
    assert await revoked_events(db, client_id) == 1


async def test_sign_out_of_another_subjects_session_is_not_found(
    identity: IdentityServiceStub, temporal: Client
) -> None:
    email = new_email()
    await register(temporal, email)
    tokens = await sign_in(identity, email)
    sid = (await identity.introspect(IntrospectRequest(token=tokens.access_token))).sid
    request = SignOutRequest(sid=sid, subject=str(uuid.uuid4()))
    assert await status_of(identity.sign_out(request)) == Status.NOT_FOUND
    assert await active(identity, tokens.access_token)


async def test_state_changes_write_their_events_to_the_outbox(
    identity: IdentityServiceStub, temporal: Client, db: asyncpg.Pool
) -> None:
    email = new_email()
    account = await register(temporal, email)
    tokens = await sign_in(identity, email)
    refreshed = (await identity.refresh(RefreshRequest(refresh_token=tokens.refresh_token))).tokens
    assert refreshed is not None
    await identity.sign_out(SignOutRequest(refresh_token=refreshed.refresh_token))
    rows = await db.fetch(
        "SELECT event_type, envelope FROM outbox WHERE aggregate_id = $1 ORDER BY sequence",
        account.account_id,
    )
    assert [r["event_type"] for r in rows] == [
        "identity.AccountRegistered",
        "identity.SignedIn",
        "identity.SignedIn",  # the refresh: a grant too
        "identity.TokenRevoked",
    ]
    signed_in, refreshed_in = (
        SignedIn().parse(EventEnvelope().parse(r["envelope"]).payload) for r in rows[1:3]
    )
    assert refreshed_in.token_family_id == signed_in.token_family_id != ""
    assert refreshed_in.scopes == signed_in.scopes


async def test_an_email_python_and_postgres_lowercase_differently_can_sign_in(
    identity: IdentityServiceStub, temporal: Client
) -> None:
    # Python lowercases the Σ before "@" to a final ς, PostgreSQL's lower() to the
    # medial sigma U+03C3 (or, under the C collation, not at all): identity
    # normalizes as registration did.
    typed = f"ΟΔΟΣ@{uuid.uuid4().hex[:10]}.example.gr"
    account = await register(temporal, emails.normalize(typed))  # as the gateway stores it
    tokens = await sign_in(identity, typed)
    assert tokens.subject == account.account_id
    assert (await sign_in(identity, f" {emails.normalize(typed)} ")).subject == account.account_id


async def test_a_nul_in_a_sign_in_email_is_an_invalid_argument(
    identity: IdentityServiceStub,
) -> None:
    assert await status_of(sign_in(identity, "a\x00b@example.test")) == Status.INVALID_ARGUMENT


async def test_a_registration_with_a_nul_is_refused_and_keeps_no_id_busy(
    temporal: Client,
) -> None:
    email = new_email()
    for name in ("Nul\x00Name", "Nul\x00Name"):  # the second run reuses the id: it is free
        with pytest.raises(WorkflowFailureError) as raised:
            await asyncio.wait_for(register(temporal, email, display_name=name), 30)
        cause = raised.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "InvalidRegistration"
        assert cause.non_retryable
    nul_email = f"nul\x00{email}"
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(register(temporal, nul_email), 30)
    # The email itself was never taken: its registration goes through.
    assert (await asyncio.wait_for(register(temporal, email), 30)).created


@pytest.mark.parametrize("email", ["nul\x00@example.test", "\ud800@example.test"])
async def test_the_activity_turns_text_postgres_refuses_into_a_final_failure(
    db: asyncpg.Pool, email: str
) -> None:
    # For a registration started before the workflow checked: PostgreSQL's refusal of
    # a NUL (22021) or asyncpg's of a lone surrogate must not be retried for ever.
    activities = IdentityActivities(db, None, None, access_ttl_s=900)  # type: ignore[arg-type]
    data = RegisterAccountInput(str(uuid.uuid4()), email, "Test User", "$argon2id$x")
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.create_account, data)
    assert raised.value.type == "InvalidRegistration" and raised.value.non_retryable


async def test_a_sign_in_upgrades_a_hash_made_with_weaker_parameters(
    identity: IdentityServiceStub, temporal: Client, db: asyncpg.Pool
) -> None:
    email = new_email()
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    account = await register(temporal, email, hasher=weak)

    await sign_in(identity, email)

    stored = await db.fetchval(
        "SELECT password_hash FROM accounts WHERE account_id = $1", uuid.UUID(account.account_id)
    )
    assert not PasswordHasher().check_needs_rehash(stored), "rehashed with current parameters"
    assert PasswordHasher().verify(stored, PASSWORD)
    assert (await sign_in(identity, email)).subject == account.account_id


# Signing keys -------------------------------------------------------------------


async def test_key_rotation_publishes_the_next_key_before_it_signs_and_keeps_old_tokens_valid(
    identity: IdentityServiceStub, temporal: Client, db: asyncpg.Pool, settings: Settings
) -> None:
    # The workflow's steps run here one by one, so each state between them is
    # asserted without racing its timer (the wait itself: tests/unit/test_identity_workflows.py).
    email = new_email()
    await register(temporal, email)
    before = await sign_in(identity, email)
    old_kid = kid_of(before.access_token)
    steps = IdentityActivities(
        db,
        SecretBox(load_kek(settings)),
        None,  # type: ignore[arg-type]  # rotation never revokes sessions
        access_ttl_s=settings.access_token_ttl_s,
    )
    env = ActivityEnvironment()
    next_kid = keys.new_kid(datetime.now(UTC), uuid.uuid4())

    assert await env.run(steps.publish_signing_key, RotateSigningKeyInput(next_kid))
    # Published ahead: the key that will sign next is served before it signs.
    assert {old_kid, next_kid} <= await served_kids(identity)
    assert next_kid not in await retired_or_current(db)
    # Published, not signing: tokens issued now still carry the old key.
    assert kid_of((await sign_in(identity, email)).access_token) == old_kid

    rotation = await env.run(steps.rotate_signing_key, RotateSigningKeyInput(next_kid))
    assert rotation.created and rotation.kid == next_kid
    assert rotation.previous_kid == old_kid
    assert old_kid not in (await env.run(steps.prune_signing_keys)).kids
    assert {old_kid, next_kid} <= await served_kids(identity), (
        "the previous key must stay published in its overlap"
    )
    overlap = await db.fetchval(
        "SELECT verify_until - retired_at FROM signing_keys WHERE kid = $1", old_kid
    )
    # Its last token may be signed a little after the retirement (a cached key ring):
    # the overlap outlasts that token's expiry plus the verifiers' 60 s leeway.
    assert overlap == keys.retired_key_overlap(settings.access_token_ttl_s)
    assert overlap >= timedelta(seconds=settings.access_token_ttl_s + 60 + 20)
    jwt.decode(before.access_token, await jwks(identity), algorithms=[ALG])
    assert await active(identity, before.access_token)

    async def signs_with_new_key() -> bool:
        return kid_of((await sign_in(identity, email)).access_token) == next_kid

    # Each identity process reloads its cached current key within KEY_RING_MAX_AGE_S.
    await eventually(signs_with_new_key, within=30, what="new tokens signed with the new key")
    events = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = $2",
        next_kid,
        "identity.SigningKeyRotated",
    )
    assert events == 1


async def served_kids(identity: IdentityServiceStub) -> set[str]:
    return {k.kid for k in (await identity.get_jwks(GetJwksRequest())).keys}


async def retired_or_current(db: asyncpg.Pool) -> set[str]:
    """Kids that are not a published next key (one current, the rest retired)."""
    rows = await db.fetch("SELECT kid FROM signing_keys WHERE is_current OR retired_at IS NOT NULL")
    return {row["kid"] for row in rows}


async def test_a_next_key_abandoned_by_its_rotation_is_pruned_after_a_day(
    identity: IdentityServiceStub, db: asyncpg.Pool, settings: Settings
) -> None:
    box = SecretBox(load_kek(settings))
    kid = f"abandoned-{uuid.uuid4().hex[:12]}"
    async with db.acquire() as conn, conn.transaction():
        assert await keys.publish(conn, box, kid)
        assert not await keys.publish(conn, box, kid), "publishing again changes nothing"
    assert kid in {k.kid for k in (await identity.get_jwks(GetJwksRequest())).keys}
    async with db.acquire() as conn, conn.transaction():
        assert kid not in await keys.prune(conn), "a fresh next key is kept"
        await conn.execute(
            "UPDATE signing_keys SET created_at = now() - interval '25 hours' WHERE kid = $1", kid
        )
        assert kid in await keys.prune(conn)
    assert kid not in {k.kid for k in (await identity.get_jwks(GetJwksRequest())).keys}


# API clients ----------------------------------------------------------------------


async def test_api_client_lifecycle(
    identity: IdentityServiceStub,
    temporal: Client,
    settings: Settings,
    redis: aioredis.Redis,
    db: asyncpg.Pool,
) -> None:
    owner = await register(temporal, new_email())
    created = await identity.create_api_client(
        CreateApiClientRequest(
            name="warehouse sync", owner_account_id=owner.account_id, scopes=["catalog:read"]
        )
    )
    assert created.client is not None and created.client_secret
    client_id, secret = created.client.client_id, created.client_secret

    # Stored sealed: neither the secret nor any of it appears in the row.
    row = await db.fetchrow("SELECT * FROM api_clients WHERE client_id = $1", uuid.UUID(client_id))
    assert secret.encode() not in bytes(row["secret_sealed"])
    assert all(secret not in str(value) for value in row.values())

    grant = SignInRequest(
        client_credentials=ClientCredentialsGrant(client_id=client_id, client_secret=secret)
    )
    tokens = (await identity.sign_in(grant)).tokens
    assert tokens is not None and not tokens.refresh_token
    assert tokens.principal_type == PrincipalType.API_CLIENT and tokens.scopes == ["catalog:read"]
    claims = jwt.decode(tokens.access_token, await jwks(identity), algorithms=[ALG]).claims
    assert claims["ptype"] == "api_client" and claims["sub"] == claims["sid"] == client_id

    bad = SignInRequest(
        client_credentials=ClientCredentialsGrant(client_id=client_id, client_secret=secret + "x")
    )
    assert await status_of(identity.sign_in(bad)) == Status.UNAUTHENTICATED

    # Only the gateway's certificate may read the signing secret.
    ask = GetApiClientSigningSecretRequest(client_id=client_id)
    catalog = Channels(settings, caller="catalog")
    try:
        as_catalog = IdentityServiceStub(catalog.get("identity")).get_api_client_signing_secret(ask)
        assert await status_of(as_catalog) == Status.PERMISSION_DENIED
    finally:
        catalog.close()
    assert (await identity.get_api_client_signing_secret(ask)).secret == secret

    # Only the gateway's certificate may create API clients (with any scopes it asks).
    mint = CreateApiClientRequest(
        name="minted", owner_account_id=owner.account_id, scopes=["identity:admin"]
    )
    for caller in ("catalog", "orders"):
        peer = Channels(settings, caller=caller)
        try:
            minted = IdentityServiceStub(peer.get("identity")).create_api_client(mint)
            assert await status_of(minted) == Status.PERMISSION_DENIED
        finally:
            peer.close()

    listed = await identity.list_api_clients(
        ListApiClientsRequest(owner_account_id=owner.account_id)
    )
    assert [c.client_id for c in listed.clients] == [client_id]

    revocation = await temporal.execute_workflow(
        RevokeApiClientWorkflow.run,
        RevokeApiClientInput(client_id=client_id, revoked_by=owner.account_id),
        id=revoke_api_client_workflow_id(client_id),
        task_queue=TASK_QUEUE,
    )

    assert revocation.newly_revoked
    assert await redis.exists(revoked_sid_key(client_id))
    assert not await active(identity, tokens.access_token)
    assert await status_of(identity.sign_in(grant)) == Status.UNAUTHENTICATED
    assert await status_of(identity.get_api_client_signing_secret(ask)) == Status.NOT_FOUND
    events = await db.fetch(
        "SELECT event_type FROM outbox WHERE aggregate_id = $1 ORDER BY sequence", client_id
    )
    assert [r["event_type"] for r in events] == [
        "identity.ApiClientCreated",
        "identity.SignedIn",
        "identity.ApiClientRevoked",
        "identity.TokenRevoked",
    ]


async def revoke_client(temporal: Client, client_id: str, by: str) -> None:
    await temporal.execute_workflow(
        RevokeApiClientWorkflow.run,
        RevokeApiClientInput(client_id=client_id, revoked_by=by),
        id=revoke_api_client_workflow_id(client_id),
        task_queue=TASK_QUEUE,
    )


async def test_an_api_client_creation_key_answers_its_retries_within_an_hour(
    identity: IdentityServiceStub, temporal: Client, db: asyncpg.Pool
) -> None:
    owner, other = await register(temporal, new_email()), await register(temporal, new_email())

    def ask(account: AccountRef, name: str = "nightly export") -> CreateApiClientRequest:
        return CreateApiClientRequest(
            name=name,
            owner_account_id=account.account_id,
            scopes=["catalog:read", "profile"],
            idempotency_key="create-export-1",
        )

    first, second = await asyncio.gather(
        identity.create_api_client(ask(owner)), identity.create_api_client(ask(owner))
    )
    assert first.client is not None and second.client is not None
    assert first.client.client_id == second.client.client_id
    assert first.client_secret == second.client_secret
    owned = await db.fetchval(
        "SELECT count(*) FROM api_clients WHERE owner_account_id = $1",
        uuid.UUID(owner.account_id),
    )
    assert owned == 1
    events = await db.fetch(
        "SELECT event_type FROM outbox WHERE aggregate_id = $1", first.client.client_id
    )
    assert [e["event_type"] for e in events] == ["identity.ApiClientCreated"]

    # The key is the owner's: another account's same key is its own client.
    theirs = await identity.create_api_client(ask(other))
    assert theirs.client is not None and theirs.client.client_id != first.client.client_id

    # The same key for another client, or a day later, answers nothing.
    reused = identity.create_api_client(ask(owner, name="another export"))
    assert await status_of(reused) == Status.ABORTED
    await db.execute(
        "UPDATE api_clients SET created_at = now() - interval '61 minutes' WHERE client_id = $1",
        uuid.UUID(first.client.client_id),
    )
    assert await status_of(identity.create_api_client(ask(owner))) == Status.ABORTED
    # Nor does a revoked client's key: no 201 for a dead client.
    await revoke_client(temporal, theirs.client.client_id, other.account_id)
    assert await status_of(identity.create_api_client(ask(other))) == Status.ABORTED

    ownerless = CreateApiClientRequest(name="x", scopes=["profile"], idempotency_key="k" * 8)
    assert await status_of(identity.create_api_client(ownerless)) == Status.INVALID_ARGUMENT


async def test_creating_an_api_client_with_an_unknown_scope_is_rejected(
    identity: IdentityServiceStub,
) -> None:
    request = CreateApiClientRequest(name="x", scopes=["root"])
    assert await status_of(identity.create_api_client(request)) == Status.INVALID_ARGUMENT


async def test_revoking_an_unknown_api_client_fails_with_api_client_not_found(
    temporal: Client, identity_service: Any
) -> None:
    client_id = str(uuid.uuid4())
    with pytest.raises(WorkflowFailureError) as raised:
        await temporal.execute_workflow(
            RevokeApiClientWorkflow.run,
            RevokeApiClientInput(client_id=client_id),
            id=revoke_api_client_workflow_id(client_id),
            task_queue=TASK_QUEUE,
        )
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "ApiClientNotFound"


# The rotation schedule -----------------------------------------------------------


async def test_identity_start_up_ensured_the_rotation_schedule(
    temporal: Client, settings: Settings, identity_service: Any
) -> None:
    description = await temporal.get_schedule_handle(ROTATION_SCHEDULE_ID).describe()
    intervals = [spec.every for spec in description.schedule.spec.intervals]
    assert intervals == [timedelta(seconds=settings.signing_key_rotation_s)]
    action = description.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == "RotateSigningKey" and action.task_queue == TASK_QUEUE


async def test_ensuring_the_schedule_creates_then_updates_then_leaves_it(temporal: Client) -> None:
    schedule_id = f"test-rotation-{uuid.uuid4().hex[:8]}"
    try:
        hour, day = timedelta(hours=1), timedelta(days=1)
        ensure = ensure_rotation_schedule
        assert await ensure(temporal, day, TASK_QUEUE, schedule_id=schedule_id) == "created"
        assert await ensure(temporal, day, TASK_QUEUE, schedule_id=schedule_id) == "unchanged"
        assert await ensure(temporal, hour, TASK_QUEUE, schedule_id=schedule_id) == "updated"
        description = await temporal.get_schedule_handle(schedule_id).describe()
        assert [spec.every for spec in description.schedule.spec.intervals] == [hour]
        # A run is bounded (three intervals): one stuck retrying stops the schedule no more.
        action = description.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.execution_timeout == 3 * hour
    finally:
        await temporal.get_schedule_handle(schedule_id).delete()


async def test_a_schedule_made_without_a_run_timeout_gets_one(temporal: Client) -> None:
    """Schedules created before runs were bounded are updated at the next start."""
    schedule_id = f"test-rotation-{uuid.uuid4().hex[:8]}"
    handle = temporal.get_schedule_handle(schedule_id)
    day = timedelta(days=1)
    unbounded = rotation_schedule(day, TASK_QUEUE)
    assert isinstance(unbounded.action, ScheduleActionStartWorkflow)
    unbounded.action.execution_timeout = None
    await temporal.create_schedule(schedule_id, unbounded)
    try:
        ensured = await ensure_rotation_schedule(temporal, day, TASK_QUEUE, schedule_id=schedule_id)
        assert ensured == "updated"
        action = (await handle.describe()).schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.execution_timeout == 3 * day
    finally:
        await handle.delete()


async def test_a_new_interval_keeps_the_schedule_paused_by_an_operator(temporal: Client) -> None:
    schedule_id = f"test-rotation-{uuid.uuid4().hex[:8]}"
    handle = temporal.get_schedule_handle(schedule_id)
    try:
        hour, day = timedelta(hours=1), timedelta(days=1)
        ensure = ensure_rotation_schedule
        assert await ensure(temporal, day, TASK_QUEUE, schedule_id=schedule_id) == "created"
        await handle.pause(note="key store migration")
        assert await ensure(temporal, hour, TASK_QUEUE, schedule_id=schedule_id) == "updated"
        state = (await handle.describe()).schedule.state
        assert (state.paused, state.note) == (True, "key store migration")
    finally:
        await handle.delete()


async def test_signing_out_an_api_client_token_twice_revokes_it_with_one_event(
    identity: IdentityServiceStub, temporal: Client, db: asyncpg.Pool
) -> None:
    owner = await register(temporal, new_email())
    created = await identity.create_api_client(
        CreateApiClientRequest(
            name="pos", owner_account_id=owner.account_id, scopes=["orders:read"]
        )
    )
    assert created.client is not None
    grant = SignInRequest(
        client_credentials=ClientCredentialsGrant(
            client_id=created.client.client_id, client_secret=created.client_secret
        )
    )
    tokens = (await identity.sign_in(grant)).tokens
    assert tokens is not None
    first = await identity.sign_out(SignOutRequest(access_token=tokens.access_token))
    again = await identity.sign_out(SignOutRequest(access_token=tokens.access_token))
    assert not first.already_revoked and again.already_revoked
    assert not await active(identity, tokens.access_token)
    events = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = $2",
        created.client.client_id,
        "identity.TokenRevoked",
    )
    assert events == 1


# Revocations and grants that must hold together -----------------------------------


async def sid_of(identity: IdentityServiceStub, tokens: Tokens) -> str:
    return (await identity.introspect(IntrospectRequest(token=tokens.access_token))).sid


async def revoked_events(db: asyncpg.Pool, aggregate_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND event_type = $2",
            aggregate_id,
            "identity.TokenRevoked",
        )
    )


async def test_a_revocation_whose_commit_failed_after_redis_is_finished_by_the_next_refresh(
    identity: IdentityServiceStub, temporal: Client, db: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    # revoke_family writes Redis inside the transaction, before the commit; when the
    # commit never happens, the family is still live in the database. Its refresh
    # must not go on renewing into access tokens every verifier refuses.
    tokens = await signed_in(identity, temporal)
    sid = await sid_of(identity, tokens)
    sessions = Sessions(Revocations(redis, sid_ttl_s=3600), refresh_ttl_s=3600)
    with pytest.raises(ConnectionResetError):
        async with db.acquire() as conn, conn.transaction():
            await sessions.revoke_family(conn, uuid.UUID(sid), RevocationReason.SIGN_OUT)
            raise ConnectionResetError("the connection died before the commit")
    family = "SELECT revoked_at FROM token_families WHERE family_id = $1"
    assert await db.fetchval(family, uuid.UUID(sid)) is None, "the revocation half-happened"

    refresh = identity.refresh(RefreshRequest(refresh_token=tokens.refresh_token))
    assert await status_of(refresh) == Status.UNAUTHENTICATED

    assert await db.fetchval(family, uuid.UUID(sid)) is not None
    account_id = await db.fetchval(
        "SELECT account_id::text FROM token_families WHERE family_id = $1", uuid.UUID(sid)
    )
    assert await revoked_events(db, account_id) == 1


async def created_client(
    identity: IdentityServiceStub, owner: AccountRef, scopes: list[str]
) -> tuple[str, SignInRequest]:
    """A new client of `owner` and its client-credentials grant."""
    created = await identity.create_api_client(
        CreateApiClientRequest(name="sync", owner_account_id=owner.account_id, scopes=scopes)
    )
    assert created.client is not None
    client_id = created.client.client_id
    grant = ClientCredentialsGrant(client_id=client_id, client_secret=created.client_secret)
    return client_id, SignInRequest(client_credentials=grant)


async def client_tokens(identity: IdentityServiceStub, grant: SignInRequest) -> Tokens:
    tokens = (await identity.sign_in(grant)).tokens
    assert tokens is not None
    return tokens


async def test_an_api_client_holds_only_what_its_owner_holds_now(
    identity: IdentityServiceStub, temporal: Client, db: asyncpg.Pool
) -> None:
    owner = await register(temporal, new_email())
    owner_id = uuid.UUID(owner.account_id)
    await db.execute("UPDATE accounts SET roles = '{admin}' WHERE account_id = $1", owner_id)
    client_id, grant = await created_client(identity, owner, ["catalog:read", "catalog:write"])
    ask = GetApiClientSigningSecretRequest(client_id=client_id)
    assert (await client_tokens(identity, grant)).scopes == ["catalog:read", "catalog:write"]

    await db.execute("UPDATE accounts SET roles = '{customer}' WHERE account_id = $1", owner_id)
    assert (await client_tokens(identity, grant)).scopes == ["catalog:read"]
    assert (await identity.get_api_client_signing_secret(ask)).scopes == ["catalog:read"]

    # A service account's role grants nothing itself: its clients keep what they were given.
    await db.execute("UPDATE accounts SET roles = '{service}' WHERE account_id = $1", owner_id)
    assert (await client_tokens(identity, grant)).scopes == ["catalog:read", "catalog:write"]

    await db.execute("UPDATE accounts SET disabled = true WHERE account_id = $1", owner_id)
    assert await status_of(identity.sign_in(grant)) == Status.UNAUTHENTICATED
    assert await status_of(identity.get_api_client_signing_secret(ask)) == Status.NOT_FOUND


@pytest.mark.parametrize("spelling", ["{%s}", "urn:uuid:%s"], ids=["braces", "urn"])
async def test_revoking_an_api_client_by_another_spelling_of_its_id_kills_its_tokens(
    identity: IdentityServiceStub,
    temporal: Client,
    db: asyncpg.Pool,
    redis: aioredis.Redis,
    spelling: str,
) -> None:
    owner = await register(temporal, new_email())
    client_id, grant = await created_client(identity, owner, ["catalog:read"])
    tokens = await client_tokens(identity, grant)
    spelled = spelling % client_id.upper()

    revocation = await temporal.execute_workflow(
        RevokeApiClientWorkflow.run,
        RevokeApiClientInput(client_id=spelled, revoked_by=owner.account_id),
        id=revoke_api_client_workflow_id(spelled),
        task_queue=TASK_QUEUE,
    )

    assert revocation.newly_revoked and revocation.client_id == client_id
    assert await redis.exists(revoked_sid_key(client_id))
    assert not await active(identity, tokens.access_token)
    events = await db.fetch(
        "SELECT aggregate_id, event_type FROM outbox WHERE aggregate_id IN ($1, $2)"
        " ORDER BY sequence",
        client_id,
        spelled,
    )
    assert [(r["aggregate_id"], r["event_type"]) for r in events] == [
        (client_id, "identity.ApiClientCreated"),
        (client_id, "identity.SignedIn"),
        (client_id, "identity.ApiClientRevoked"),
        (client_id, "identity.TokenRevoked"),
    ]


async def test_signing_out_a_token_of_another_subject_revokes_nothing(
    identity: IdentityServiceStub, temporal: Client, db: asyncpg.Pool
) -> None:
    stranger = str(uuid.uuid4())
    session = await signed_in(identity, temporal)
    owner = await register(temporal, new_email())
    client_id, grant = await created_client(identity, owner, ["catalog:read"])
    machine = await client_tokens(identity, grant)

    async def signed_out_by_stranger(tokens: Tokens) -> Status | None:
        request = SignOutRequest(access_token=tokens.access_token, subject=stranger)
        try:
            await identity.sign_out(request)
        except GRPCError as error:
            return error.status
        return None

    # The account's token, then the client's: both refused, neither revoked.
    assert [await signed_out_by_stranger(t) for t in (session, machine)] == [Status.NOT_FOUND] * 2
    assert [await active(identity, t.access_token) for t in (session, machine)] == [True, True]
    assert await revoked_events(db, client_id) == 0
