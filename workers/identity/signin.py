"""Sign-in (password and client-credentials grants), refresh, sign-out and introspection.

Each is one local transaction answered in milliseconds (plus one argon2
verification for a password), so they are direct gRPC calls, not workflows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from agora import emails, scopes, text
from agora.errors import InvalidArgument
from agora.passwords import Passwords
from contracts.agora.identity.v1 import PrincipalType, RevocationReason
from workers.identity import tokens
from workers.identity.apiclients import ApiClients, canonical_id
from workers.identity.errors import (
    InvalidCredentials,
    InvalidScope,
    InvalidToken,
    SessionNotFound,
)
from workers.identity.keys import KeyRing
from workers.identity.sessions import (
    NewSession,
    Sessions,
    append_signed_in,
    append_token_revoked,
)
from workers.identity.tokens import Principal, TokenPolicy

# Namespace of the TokenRevoked event id of an API-client token's sign-out (uuid5 of its jti).
_JTI_REVOKED = uuid.UUID("5b1c2f0e-6a51-4d0b-9a43-3f6f1c2d7e84")


@dataclass(frozen=True)
class Grant:
    """What a successful sign-in or refresh returns."""

    principal: Principal
    access: tokens.IssuedToken
    session: NewSession | None  # None for client credentials: no refresh token


@dataclass(frozen=True)
class SignOutResult:
    sid: str
    already_revoked: bool


class TokenService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keys: KeyRing,
        sessions: Sessions,
        clients: ApiClients,
        policy: TokenPolicy,
        passwords: Passwords | None = None,
    ):
        self._passwords = passwords or Passwords()
        self._pool = pool
        self._keys = keys
        self._sessions = sessions
        self._clients = clients
        self.policy = policy

    async def sign_in_password(self, email: str, password: str, requested: list[str]) -> Grant:
        email = emails.normalize(email)  # as registration stored it
        if not text.storable(email):
            # No account can have it, and PostgreSQL would refuse the query (UNKNOWN).
            raise InvalidArgument("email must not contain NUL or unpaired surrogates")
        # lower() on both sides still matches rows stored before emails.normalize
        # existed (Python-lowered, like the normalized input).
        row = await self._pool.fetchrow(
            "SELECT account_id, password_hash, roles, scopes, disabled FROM accounts"
            " WHERE lower(email) = lower($1)",
            email,
        )
        ok = await self._passwords.verify(row["password_hash"] if row else None, password)
        if row is None or not ok or row["disabled"]:
            raise InvalidCredentials()
        account_id = str(row["account_id"])
        granted = _narrow(scopes.scopes_for(row["roles"], row["scopes"]), requested)
        rehashed = await self._passwords.rehash_if_needed(row["password_hash"], password)
        key = await self._keys.signing_key()  # before the grant is recorded, as refresh does
        async with self._pool.acquire() as conn, conn.transaction():
            if rehashed is not None:
                # Guarded by the old hash: a password changed meanwhile is left alone.
                await conn.execute(
                    "UPDATE accounts SET password_hash = $3"
                    " WHERE account_id = $1 AND password_hash = $2",
                    row["account_id"],
                    row["password_hash"],
                    rehashed,
                )
            session = await self._sessions.start(conn, account_id, granted)
            await append_signed_in(conn, account_id, PrincipalType.ACCOUNT, session.sid, granted)
        principal = Principal(account_id, "account", tuple(granted), session.sid)
        return Grant(principal, tokens.issue(principal, self.policy, key), session)

    async def sign_in_client(self, client_id: str, secret: str, requested: list[str]) -> Grant:
        granted = _narrow(list(await self._clients.authenticate(client_id, secret)), requested)
        # The tokens carry the canonical id, as its revocation does.
        client_id = canonical_id(client_id)
        key = await self._keys.signing_key()  # before the grant is recorded
        async with self._pool.acquire() as conn, conn.transaction():
            await append_signed_in(conn, client_id, PrincipalType.API_CLIENT, "", granted)
        # The sid of a client's tokens is the client id: revoking the client revokes them all.
        principal = Principal(client_id, "api_client", tuple(granted), client_id)
        return Grant(principal, tokens.issue(principal, self.policy, key), None)

    async def refresh(self, refresh_token: str) -> Grant:
        # The key first: once the rotation commits, the presented token is spent, and
        # a failure after it (the key ring's reload) would make the client's retry
        # look like reuse, which revokes the whole session.
        key = await self._keys.signing_key()
        rotated = await self._sessions.rotate(self._pool, refresh_token)
        principal = Principal(rotated.account_id, "account", rotated.scopes, rotated.session.sid)
        return Grant(principal, tokens.issue(principal, self.policy, key), rotated.session)

    async def introspect(self, token: str) -> tokens.VerifiedToken | None:
        """The verified token, or None when it is invalid, expired or revoked."""
        try:
            keyset = await self._keys.keyset(kid=tokens.unverified_kid(token))
            verified = tokens.verify(token, keyset, self.policy)
        except InvalidToken:
            return None
        revoked = await self._sessions.revocations.is_revoked(verified.jti, verified.principal.sid)
        return None if revoked else verified

    async def sign_out(
        self, *, refresh_token: str = "", sid: str = "", access_token: str = "", subject: str = ""
    ) -> SignOutResult:
        """Revoke a session (or, for an API client's access token, that token)."""
        if access_token:
            verified = tokens.verify(
                access_token,
                await self._keys.keyset(kid=tokens.unverified_kid(access_token)),
                self.policy,
            )
            if subject and verified.principal.subject != subject:
                # Before anything is revoked, for either kind of token.
                raise SessionNotFound("no such session")
            subject = verified.principal.subject
            if verified.principal.kind == "api_client":
                # A client's sid is the client itself: revoking it would disable the client.
                already = await self._revoke_client_token(verified)
                return SignOutResult(verified.principal.sid, already_revoked=already)
            sid = verified.principal.sid
        async with self._pool.acquire() as conn, conn.transaction():
            family = await self._sessions.family_of(conn, refresh_token=refresh_token, sid=sid)
            if family is None or (subject and family[1] != subject):
                raise SessionNotFound("no such session")
            family_id, _, already = family
            if not already:
                await self._sessions.revoke_family(conn, family_id, RevocationReason.SIGN_OUT)
            if access_token:
                # After the session's own key (revoke_family), never before it: the
                # gateway refuses a revoked token at admission, so a sign-out that
                # failed after revoking only the token could not be retried, and its
                # session (and refresh token) would live on.
                await self._sessions.revocations.revoke_jti(verified.jti, verified.expires_at)
        return SignOutResult(str(family_id), already_revoked=already)

    async def _revoke_client_token(self, verified: tokens.VerifiedToken) -> bool:
        """Revoke one API-client access token with exactly one TokenRevoked event;
        True when it already was.

        The event's id is derived from the jti, so a repeated sign-out finds it (and
        two at once collide on it). Redis is written after the commit, and again by a
        repeated sign-out: written before it, a commit that failed left the token
        revoked without its event, and the gateway, which refuses a revoked token at
        admission, let no retry through to write it.
        """
        event_id = uuid.uuid5(_JTI_REVOKED, verified.jti)
        already = False
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if await conn.fetchval("SELECT 1 FROM outbox WHERE event_id = $1", event_id):
                    already = True
                else:
                    await _append_jti_revoked(conn, verified, event_id)
        except asyncpg.UniqueViolationError:
            already = True  # a concurrent sign-out of the same token committed first
        await self._sessions.revocations.revoke_jti(verified.jti, verified.expires_at)
        return already


def _narrow(granted: list[str], requested: list[str]) -> list[str]:
    try:
        return scopes.narrow(granted, requested)
    except scopes.UnknownScope as exc:
        raise InvalidScope(str(exc)) from None


async def _append_jti_revoked(
    conn: asyncpg.Connection, verified: tokens.VerifiedToken, event_id: uuid.UUID
) -> None:
    await append_token_revoked(
        conn,
        subject=verified.principal.subject,
        jti=verified.jti,
        reason=RevocationReason.SIGN_OUT,
        principal_type=PrincipalType.API_CLIENT,
        event_id=event_id,
    )
