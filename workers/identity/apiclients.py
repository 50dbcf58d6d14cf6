"""API clients (machine accounts): provisioning, listing, their sealed HMAC secrets, revocation.

The secret is generated here, returned once by CreateApiClient and otherwise
kept only sealed under the KEK. It is both the client-credentials secret and
the HMAC-SHA256 key for request signing, so the gateway (and only the gateway)
can ask for it to check signatures.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from agora import keyset, outbox, scopes
from agora.errors import Conflict, InvalidArgument
from contracts.agora.identity.v1 import (
    ApiClientCreated,
    ApiClientRevoked,
    PrincipalType,
    RevocationReason,
)
from workers.identity.errors import (
    AccountNotFound,
    ApiClientNotFound,
    InvalidCredentials,
    InvalidScope,
)
from workers.identity.kek import SecretBox
from workers.identity.sessions import append_token_revoked

TOPIC = "identity.events"
SECRET_PREFIX = "ags_"  # "Agora signing secret": recognisable by secret scanners
MAX_PAGE = 200
_COLUMNS = "client_id, name, owner_account_id, scopes, created_at, revoked_at"
# How long a creation's Idempotency-Key answers a retry (with the secret) again:
# long enough for a client's retries after a lost answer, short for a key that leaked.
KEY_REPLAY = dt.timedelta(hours=1)
MAX_KEY = 200  # the gateway's `<sid>:<Idempotency-Key>`: 36 + 1 + 128
KEY_REUSED = "this idempotency key created a client with another name or scopes"
KEY_EXPIRED = "this idempotency key created a client more than an hour ago: use a new key"
KEY_REVOKED = "the client this idempotency key created is revoked: use a new key"


@dataclass(frozen=True)
class ApiClientRow:
    client_id: str
    name: str
    owner_account_id: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> ApiClientRow:
        return cls(
            client_id=str(row["client_id"]),
            name=row["name"],
            owner_account_id=str(row["owner_account_id"] or ""),
            scopes=tuple(row["scopes"]),
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )


@dataclass(frozen=True)
class Page:
    clients: list[ApiClientRow]
    next_cursor: str


def _context(client_id: str) -> str:
    return f"api_client:{client_id}"


def _creation_digest(name: str, granted: list[str]) -> str:
    """What a creation asked for, so a key reused for another client is refused."""
    canonical = json.dumps({"name": name, "scopes": sorted(granted)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_client_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def canonical_id(text: str) -> str:
    """A client id (or sid) as tokens carry it: `uuid.UUID` reads upper case, braces and
    `urn:uuid:` too, and revocation keys and events must name the id tokens hold."""
    parsed = parse_client_id(text)
    return str(parsed) if parsed else text


class ApiClients:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox):
        self._pool = pool
        self._box = box

    async def create(
        self, name: str, owner_account_id: str, requested: list[str], key: str = ""
    ) -> tuple[ApiClientRow, str]:
        """Insert a client and its ApiClientCreated event; returns it with its clear secret.

        `key` (the caller's Idempotency-Key, scoped to the owner): a retry whose
        answer was lost gets the first creation again, secret included, where it
        would mint a second client whose secret nobody received. Only within
        `KEY_REPLAY`, for the same name and scopes, and while the client is not
        revoked: otherwise `Conflict`. The gateway scopes the key to the caller's
        session too (`<sid>:<key>`), so another session of the owner reads nothing.
        """
        if not name.strip():
            raise InvalidArgument("name is required")
        try:
            granted = scopes.validate(requested)
        except scopes.UnknownScope as exc:
            raise InvalidScope(str(exc)) from None
        if not granted:
            raise InvalidScope("an API client needs at least one scope")
        owner = parse_client_id(owner_account_id) if owner_account_id else None
        if owner_account_id and owner is None:
            raise InvalidArgument("owner_account_id must be a UUID")
        digest = _creation_digest(name.strip(), granted) if key else None
        if key and (owner is None or len(key) > MAX_KEY or "\x00" in key):
            raise InvalidArgument(
                f"an idempotency_key is 1-{MAX_KEY} characters and needs an owner"
            )
        client_id = str(uuid.uuid4())
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        async with self._pool.acquire() as conn, conn.transaction():
            if owner and not await conn.fetchval(
                "SELECT 1 FROM accounts WHERE account_id = $1", owner
            ):
                raise AccountNotFound("no such owner account")
            # A concurrent creation with the same key waits here for the other's
            # commit, then inserts nothing and reads the row that one wrote.
            row = await conn.fetchrow(
                "INSERT INTO api_clients (client_id, name, owner_account_id, scopes,"
                " secret_sealed, kek_id, creation_key, creation_digest)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (owner_account_id, creation_key) WHERE creation_key IS NOT NULL"
                f" DO NOTHING RETURNING {_COLUMNS}",
                uuid.UUID(client_id),
                name.strip(),
                owner,
                granted,
                self._box.seal(secret.encode(), _context(client_id)),
                self._box.kek_id,
                key or None,
                digest,
            )
            if row is None:
                return await self._replay(conn, owner, key, digest)
            await outbox.append(
                conn,
                producer="identity",
                topic=TOPIC,
                aggregate_type="api_client",
                aggregate_id=client_id,
                payload=ApiClientCreated(
                    client_id=client_id,
                    name=name.strip(),
                    owner_account_id=owner_account_id,
                    scopes=granted,
                ),
            )
        return ApiClientRow.of(row), secret

    async def _replay(
        self, conn: asyncpg.Connection, owner: uuid.UUID | None, key: str, digest: str | None
    ) -> tuple[ApiClientRow, str]:
        """The client `key` created, with its secret, as its creation answered."""
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS}, secret_sealed, creation_digest, now() - created_at AS age"
            " FROM api_clients WHERE owner_account_id = $1 AND creation_key = $2",
            owner,
            key,
        )
        if row["creation_digest"] != digest:
            raise Conflict(KEY_REUSED)
        if row["age"] > KEY_REPLAY:
            # Past the window a key answers nothing: a caller still retrying has long
            # lost track, and whoever learns the key later reads no secret with it.
            raise Conflict(KEY_EXPIRED)
        client = ApiClientRow.of(row)
        if client.revoked_at is not None:
            raise Conflict(KEY_REVOKED)  # not a 201 for a client that is dead
        secret = self._box.open(bytes(row["secret_sealed"]), _context(client.client_id))
        return client, secret.decode()

    async def signing_secret(self, client_id: str) -> tuple[str, tuple[str, ...]]:
        """The clear secret and scopes of an active client whose owner is not disabled.

        A client acts for its owner: it holds only those of its scopes the owner's
        roles still grant. A role taken away takes effect at the client's next
        sign-in: the gateway checks signatures only and ignores the scopes returned
        here, so tokens already issued keep theirs until they expire. A disabled
        owner's client is refused sign-in and its secret, so its signed requests
        stop once the gateway's cached secret (a minute) runs out.
        """
        cid = parse_client_id(client_id)
        row = None
        if cid is not None:
            row = await self._pool.fetchrow(
                "SELECT c.scopes, c.secret_sealed, c.revoked_at, c.owner_account_id,"
                " o.disabled AS owner_disabled, o.roles, o.scopes AS owner_scopes"
                " FROM api_clients c LEFT JOIN accounts o ON o.account_id = c.owner_account_id"
                " WHERE c.client_id = $1",
                cid,
            )
        if row is None or row["revoked_at"] is not None or row["owner_disabled"]:
            raise ApiClientNotFound("no such active API client")
        # Sealed under the canonical id: an upper-case spelling must open it too.
        secret = self._box.open(bytes(row["secret_sealed"]), _context(str(cid))).decode()
        return secret, _held_now(row)

    async def authenticate(self, client_id: str, client_secret: str) -> tuple[str, ...]:
        """The scopes of a client whose secret matches; InvalidCredentials otherwise."""
        try:
            secret, granted = await self.signing_secret(client_id)
        except ApiClientNotFound:
            raise InvalidCredentials() from None
        if not hmac.compare_digest(secret.encode(), client_secret.encode()):
            raise InvalidCredentials()
        return granted

    async def page(
        self, owner_account_id: str, include_revoked: bool, page_size: int, cursor: str
    ) -> Page:
        """Keyset pagination, oldest first; the cursor is the last row's (created_at, id)."""
        size = page_size or 50
        if not 1 <= size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE}")
        conditions: list[str] = ["true"]
        args: list[object] = []
        if owner_account_id:
            owner = parse_client_id(owner_account_id)
            if owner is None:
                raise InvalidArgument("owner_account_id must be a UUID")
            args.append(owner)
            conditions.append(f"owner_account_id = ${len(args)}")
        if not include_revoked:
            conditions.append("revoked_at IS NULL")
        if cursor:
            after_at, after_id = _decode_cursor(cursor)
            args += [after_at, after_id]
            conditions.append(f"(created_at, client_id) > (${len(args) - 1}, ${len(args)})")
        args.append(size + 1)
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM api_clients WHERE {' AND '.join(conditions)}"
            f" ORDER BY created_at, client_id LIMIT ${len(args)}",
            *args,
        )
        clients = [ApiClientRow.of(r) for r in rows[:size]]
        more = len(rows) > size
        return Page(clients, _encode_cursor(clients[-1]) if more else "")


def _held_now(row: asyncpg.Record) -> tuple[str, ...]:
    """The client's scopes its owner still holds: all of them for a client without
    owner or one a service account owns (the service role grants nothing by itself,
    its clients exactly what they were created with; agora/scopes.py)."""
    if row["owner_account_id"] is None or scopes.SERVICE_ROLE in (r.lower() for r in row["roles"]):
        return tuple(row["scopes"])
    owner_holds = set(scopes.scopes_for(row["roles"], row["owner_scopes"]))
    return tuple(s for s in row["scopes"] if s in owner_holds)


def _encode_cursor(last: ApiClientRow) -> str:
    return keyset.encode(last.created_at, last.client_id)


_decode_cursor = keyset.decode


async def mark_revoked(
    conn: asyncpg.Connection,
    client_id: str,
    revoked_by: str,
    *,
    workflow: outbox.WorkflowRef | None = None,
) -> tuple[dt.datetime, bool]:
    """Mark a client revoked with its events, in the caller's transaction.

    Returns (revoked_at, newly_revoked); idempotent: a second call changes nothing.
    """
    cid = parse_client_id(client_id)
    row = (
        await conn.fetchrow(
            "SELECT revoked_at FROM api_clients WHERE client_id = $1 FOR UPDATE", cid
        )
        if cid
        else None
    )
    if row is None:
        raise ApiClientNotFound(f"no API client {client_id}")
    if row["revoked_at"] is not None:
        return row["revoked_at"], False
    client_id = str(cid)  # the events name the id as tokens carry it
    revoked_at = await conn.fetchval(
        "UPDATE api_clients SET revoked_at = now(), revoked_by = $2 WHERE client_id = $1"
        " RETURNING revoked_at",
        cid,
        revoked_by,
    )
    await outbox.append(
        conn,
        producer="identity",
        topic=TOPIC,
        aggregate_type="api_client",
        aggregate_id=client_id,
        payload=ApiClientRevoked(client_id=client_id, revoked_by=revoked_by),
        workflow=workflow,
    )
    await append_token_revoked(
        conn,
        subject=client_id,
        sid=client_id,
        reason=RevocationReason.API_CLIENT_REVOKED,
        principal_type=PrincipalType.API_CLIENT,
        workflow=workflow,
    )
    return revoked_at, True
