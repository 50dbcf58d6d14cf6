"""A sign-in that cannot sign its token records no grant: no session, no SignedIn event."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from workers.identity import signin
from workers.identity.sessions import NewSession
from workers.identity.signin import TokenService

ACCOUNT = {
    "account_id": "6f1c1f8e-2b8c-4f43-9d4e-2a7c1d8e5b10",
    "password_hash": "$argon2id$stand-in",
    "roles": ["customer"],
    "scopes": [],
    "disabled": False,
}
CLIENT_ID = "0b8e6f5a-3c1d-4e2f-8a9b-7c6d5e4f3a2b"


class KeyRingDown:
    async def signing_key(self) -> Any:
        raise ConnectionError("the key ring could not reload its keys")


class AnyPassword:
    async def verify(self, _hash: str | None, _password: str) -> bool:
        return True

    async def rehash_if_needed(self, _hash: str, _password: str) -> None:
        return None


class AnyClient:
    async def authenticate(self, _client_id: str, _secret: str) -> tuple[str, ...]:
        return ("catalog:read",)


class Recorded:
    """The database side of a grant: the transaction, its session and its event."""

    def __init__(self) -> None:
        self.grants: list[str] = []

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Recorded]:
        yield self

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def fetchrow(self, *_: Any) -> Any:
        return ACCOUNT

    async def start(self, _conn: Any, account_id: str, _scopes: list[str]) -> NewSession:
        self.grants.append(f"session of {account_id}")
        return NewSession("sid-1", "art_x", dt.datetime.now(dt.UTC))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    db = Recorded()

    async def signed_in(_conn: Any, subject: str, *_: Any) -> None:
        db.grants.append(f"SignedIn {subject}")

    monkeypatch.setattr(signin, "append_signed_in", signed_in)
    return db


def service(db: Recorded) -> TokenService:
    return TokenService(
        pool=db,  # type: ignore[arg-type]
        keys=KeyRingDown(),  # type: ignore[arg-type]
        sessions=db,  # type: ignore[arg-type]
        clients=AnyClient(),  # type: ignore[arg-type]
        policy=None,  # type: ignore[arg-type]
        passwords=AnyPassword(),  # type: ignore[arg-type]
    )


async def test_a_password_sign_in_whose_key_is_unavailable_records_no_grant(
    recorded: Recorded,
) -> None:
    with pytest.raises(ConnectionError):
        await service(recorded).sign_in_password("ann@example.test", "a password", [])
    assert recorded.grants == []


async def test_a_client_sign_in_whose_key_is_unavailable_records_no_grant(
    recorded: Recorded,
) -> None:
    with pytest.raises(ConnectionError):
        await service(recorded).sign_in_client(CLIENT_ID, "ags_secret", [])
    assert recorded.grants == []
