"""Sessions: refresh-token families with rotation and reuse detection, and revocation.

A session starts at a password sign-in and is one family of refresh tokens:
each refresh exchanges the presented token for a new one. Presenting a token
that was already exchanged means it was copied, so the whole family is
revoked (reuse detection, OAuth 2.0 Security BCP §4.14).

One exception, for a refresh whose answer was lost (a dropped connection, a
timeout): the same token presented again within the reuse grace (30 s), while
the token its first exchange made has never been used, is exchanged again. The
unused successor is then marked used, so whoever holds it (a thief who raced
the client, or a second tab) revokes the family by presenting it: reuse is still
detected, one step later. After the grace, or once the successor was used, a
second presentation revokes the family as before. The price: a thief who presents
a copied token within the grace, before the client's next refresh, gets a session
until the client presents its own (spent) successor, which then revokes both. The
grace is measured by the database's clock (one clock for every pod), and 0 turns
it off.

Revocation is written to Redis, where the gateway checks it on every request:
`identity:revoked:sid:<sid>` kills every access token of a session (or of an
API client, whose sid is its id), `identity:revoked:jti:<jti>` one token. The
Redis write happens inside the database transaction, before its commit: if
Redis fails the revocation fails as a whole, and if the commit fails the
token is revoked anyway (the safe side). Such a session is still live in the
database, so its next refresh, seeing the Redis key, finishes the revocation
there and is refused: it never renews into access tokens the gateway refuses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from agora import outbox
from agora.scopes import scopes_for
from contracts.agora.identity.v1 import PrincipalType, RevocationReason, SignedIn, TokenRevoked
from workers.identity.errors import InvalidRefreshToken, RefreshTokenReused
from workers.identity.tokens import LEEWAY_S

TOPIC = "identity.events"
REFRESH_TOKEN_PREFIX = "art_"  # "Agora refresh token": recognisable by secret scanners


def revoked_sid_key(sid: str) -> str:
    return f"identity:revoked:sid:{sid}"


def revoked_jti_key(jti: str) -> str:
    return f"identity:revoked:jti:{jti}"


def hash_refresh_token(token: str) -> bytes:
    """Only this digest is stored: a database leak yields no usable refresh token."""
    return hashlib.sha256(token.encode()).digest()


def new_refresh_token() -> str:
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


def sid_revocation_ttl_s(refresh_ttl_s: int, access_ttl_s: int) -> int:
    """How long a session's (or an API client's) revocation key lives: past its last
    refresh token and past the last access token, with the verifiers' clock leeway. A
    refresh lifetime set shorter than the access one would otherwise let a signed-out
    session's access tokens work again once the key expired."""
    return max(refresh_ttl_s, access_ttl_s + LEEWAY_S + 1)


class Revocations:
    """Identity's revocation keys in Redis (read by the gateway and by Introspect)."""

    def __init__(self, redis: aioredis.Redis, *, sid_ttl_s: int):
        self._redis = redis
        self._sid_ttl_s = sid_ttl_s

    async def revoke_sid(self, sid: str) -> None:
        # Outlives every refresh and access token of the session (sid_revocation_ttl_s).
        await self._redis.set(revoked_sid_key(sid), b"1", ex=self._sid_ttl_s)

    async def revoke_jti(self, jti: str, expires_at: dt.datetime) -> None:
        # Verifiers accept a token until exp plus their clock leeway (identity's 60 s,
        # the gateway's 30 s): the key must outlive that, or the token works again.
        remaining = int((expires_at - dt.datetime.now(dt.UTC)).total_seconds()) + LEEWAY_S + 1
        if remaining > 0:
            await self._redis.set(revoked_jti_key(jti), b"1", ex=remaining)

    async def is_revoked(self, jti: str, sid: str) -> bool:
        return bool(await self._redis.exists(revoked_jti_key(jti), revoked_sid_key(sid)))

    async def is_sid_revoked(self, sid: str) -> bool:
        return bool(await self._redis.exists(revoked_sid_key(sid)))


@dataclass(frozen=True)
class NewSession:
    sid: str
    refresh_token: str
    refresh_expires_at: dt.datetime


@dataclass(frozen=True)
class Rotated:
    """A successful refresh: the account, its scopes for the new access token, the new token."""

    account_id: str
    scopes: tuple[str, ...]
    session: NewSession


class Sessions:
    def __init__(self, revocations: Revocations, *, refresh_ttl_s: int, reuse_grace_s: int = 0):
        self.revocations = revocations
        self._ttl = dt.timedelta(seconds=refresh_ttl_s)
        self._grace = dt.timedelta(seconds=reuse_grace_s)

    async def start(
        self, conn: asyncpg.Connection, account_id: str, scopes: list[str]
    ) -> NewSession:
        """A new family with its first refresh token, in the caller's transaction."""
        family_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO token_families (family_id, account_id, scopes) VALUES ($1, $2, $3)",
            family_id,
            uuid.UUID(account_id),
            scopes,
        )
        return await self._add_token(conn, family_id)

    async def _add_token(self, conn: asyncpg.Connection, family_id: uuid.UUID) -> NewSession:
        token = new_refresh_token()
        expires_at = dt.datetime.now(dt.UTC) + self._ttl
        await conn.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, expires_at) VALUES ($1, $2, $3)",
            hash_refresh_token(token),
            family_id,
            expires_at,
        )
        return NewSession(str(family_id), token, expires_at)

    async def rotate(self, pool: asyncpg.Pool, refresh_token: str) -> Rotated:
        """Exchange a refresh token for a new one of the same family.

        Raises RefreshTokenReused (after committing the family's revocation)
        when the token was already exchanged, and InvalidRefreshToken (after
        committing it too) when Redis holds a revocation the database missed.
        """
        reused = half_revoked = False
        presented = hash_refresh_token(refresh_token)
        async with pool.acquire() as conn, conn.transaction():
            # The family first, alone: every exchange of the family (this token's, its
            # successor's) and every revocation takes this lock before any token row, so
            # they serialize without deadlocking. The token is read after it, in a
            # statement of its own: its snapshot then holds whatever exchange committed
            # while this one waited (a read in the locking statement itself would see a
            # successor's `used_at` as it was before the wait, and grant the grace to a
            # thief racing the client's next refresh).
            family_id = await conn.fetchval(
                "SELECT f.family_id FROM refresh_tokens t JOIN token_families f"
                " USING (family_id) WHERE t.token_hash = $1 FOR UPDATE OF f",
                presented,
            )
            if family_id is None:
                raise InvalidRefreshToken()
            row = await conn.fetchrow(
                """
                SELECT t.family_id, t.expires_at, t.used_at, t.replaced_by,
                       $2 > 0 AND t.replaced_by IS NOT NULL AND s.used_at IS NULL
                         AND now() - t.used_at <= make_interval(secs => $2)
                         AS answer_lost,
                       f.account_id, f.scopes, f.revoked_at,
                       a.disabled, a.roles, a.scopes AS extra_scopes
                FROM refresh_tokens t
                JOIN token_families f USING (family_id)
                JOIN accounts a USING (account_id)
                LEFT JOIN refresh_tokens s ON s.token_hash = t.replaced_by
                WHERE t.token_hash = $1
                FOR UPDATE OF t
                """,
                presented,
                self._grace.total_seconds(),
            )
            if row is None or row["revoked_at"] is not None or row["disabled"]:
                raise InvalidRefreshToken()
            if row["used_at"] is not None and not row["answer_lost"]:
                reused = True
                await self.revoke_family(conn, row["family_id"], RevocationReason.REFRESH_REUSE)
            elif row["expires_at"] <= dt.datetime.now(dt.UTC):
                raise InvalidRefreshToken("refresh token expired")
            elif await self.revocations.is_sid_revoked(str(row["family_id"])):
                # A revocation whose commit failed after its Redis write (revoke_family):
                # its reason is lost, but the session must not go on renewing.
                half_revoked = True
                await self.revoke_family(conn, row["family_id"], RevocationReason.UNSPECIFIED)
            else:
                if row["used_at"] is not None:
                    # Exchanged again within the grace, its answer lost (see the module):
                    # the first successor is spent, so its holder revokes the family.
                    await conn.execute(
                        "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1",
                        row["replaced_by"],
                    )
                session = await self._add_token(conn, row["family_id"])
                await conn.execute(
                    "UPDATE refresh_tokens SET used_at = coalesce(used_at, now()),"
                    " replaced_by = $2 WHERE token_hash = $1",
                    presented,
                    hash_refresh_token(session.refresh_token),
                )
                # A role taken away since sign-in takes its scopes away at the next refresh.
                current = set(scopes_for(row["roles"], row["extra_scopes"]))
                scopes = [s for s in row["scopes"] if s in current]
                # A refresh is a grant: audit sees every session extended, not only begun.
                await append_signed_in(
                    conn, str(row["account_id"]), PrincipalType.ACCOUNT, session.sid, scopes
                )
        if reused:
            raise RefreshTokenReused()
        if half_revoked:
            raise InvalidRefreshToken("the session is revoked")
        return Rotated(str(row["account_id"]), tuple(scopes), session)

    async def revoke_family(
        self,
        conn: asyncpg.Connection,
        family_id: uuid.UUID,
        reason: RevocationReason,
        *,
        workflow: outbox.WorkflowRef | None = None,
    ) -> bool:
        """Revoke a session in the caller's transaction; False when it already was."""
        account_id = await conn.fetchval(
            "UPDATE token_families SET revoked_at = now(), revoke_reason = $2"
            " WHERE family_id = $1 AND revoked_at IS NULL RETURNING account_id",
            family_id,
            reason.name.lower(),
        )
        if account_id is None:
            return False
        await self.revocations.revoke_sid(str(family_id))
        await append_token_revoked(
            conn,
            subject=str(account_id),
            sid=str(family_id),
            reason=reason,
            workflow=workflow,
        )
        return True

    async def family_of(
        self, conn: asyncpg.Connection, *, refresh_token: str = "", sid: str = ""
    ) -> tuple[uuid.UUID, str, bool] | None:
        """(family id, account id, revoked?) of a session named by either handle."""
        if refresh_token:
            row = await conn.fetchrow(
                "SELECT f.family_id, f.account_id, f.revoked_at FROM refresh_tokens t"
                " JOIN token_families f USING (family_id) WHERE t.token_hash = $1",
                hash_refresh_token(refresh_token),
            )
        else:
            try:
                family_id = uuid.UUID(sid)
            except ValueError:
                return None
            row = await conn.fetchrow(
                "SELECT family_id, account_id, revoked_at FROM token_families WHERE family_id = $1",
                family_id,
            )
        if row is None:
            return None
        return row["family_id"], str(row["account_id"]), row["revoked_at"] is not None


async def append_signed_in(
    conn: asyncpg.Connection,
    subject: str,
    principal_type: PrincipalType,
    sid: str,
    granted: list[str],
) -> None:
    """A grant (sign-in, client credentials, refresh), in the granting transaction."""
    await outbox.append(
        conn,
        producer="identity",
        topic=TOPIC,
        aggregate_type=_aggregate_type(principal_type),
        aggregate_id=subject,
        payload=SignedIn(
            subject=subject, principal_type=principal_type, token_family_id=sid, scopes=granted
        ),
    )


async def append_token_revoked(
    conn: asyncpg.Connection,
    *,
    subject: str,
    reason: RevocationReason,
    sid: str = "",
    jti: str = "",
    principal_type: PrincipalType = PrincipalType.ACCOUNT,
    workflow: outbox.WorkflowRef | None = None,
    event_id: uuid.UUID | None = None,
) -> None:
    await outbox.append(
        conn,
        producer="identity",
        topic=TOPIC,
        aggregate_type=_aggregate_type(principal_type),
        aggregate_id=subject,
        payload=TokenRevoked(subject=subject, jti=jti, token_family_id=sid, reason=reason),
        workflow=workflow,
        event_id=event_id,
    )


def _aggregate_type(principal_type: PrincipalType) -> str:
    """The aggregate a principal's grant or revocation is an event of."""
    return "account" if principal_type == PrincipalType.ACCOUNT else "api_client"
