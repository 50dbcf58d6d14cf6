"""Identity's defences that need no stack: unstorable text, who may create API clients,
password-hash upgrades at sign-in, and how long a retired signing key verifies."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from argon2 import PasswordHasher
from joserfc.jwk import OKPKey
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.identity import IdentityActivities, RegisterAccountInput, RevokeApiClientInput
from agora import grpc
from agora.errors import InvalidArgument, PermissionDenied
from contracts.agora.identity.v1 import CreateApiClientRequest
from gateway import tokens as gateway_tokens
from workers.identity import signin
from workers.identity import tokens as identity_tokens
from workers.identity.api import IdentityApi
from workers.identity.errors import InvalidCredentials
from workers.identity.keys import KeyRing
from workers.identity.sessions import NewSession
from workers.identity.signin import TokenService
from workers.identity.tokens import TokenPolicy

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
PASSWORD = "correct horse battery staple"


class FakeConn:
    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def fetchrow(self, *_: Any) -> Any:
        if self.failure is not None:
            raise self.failure
        return None

    async def execute(self, query: str, *args: Any) -> str:
        if self.failure is not None:
            raise self.failure
        self.executed.append((query, args))
        return "UPDATE 1"


class FakePool:
    def __init__(self, conn: FakeConn, row: dict[str, Any] | None = None) -> None:
        self.conn = conn
        self.row = row
        self.looked_up: list[Any] = []

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConn]:
        yield self.conn

    async def fetchrow(self, _query: str, *args: Any) -> Any:
        self.looked_up.append(args)
        return self.row


def _encode_failure() -> asyncpg.DataError:
    """What asyncpg raises when it cannot encode an argument (a lone surrogate)."""
    try:
        "\ud800".encode()
    except UnicodeEncodeError as exc:
        error = asyncpg.DataError("invalid input for query argument $2")
        error.__cause__ = exc
        return error
    raise AssertionError("unreachable")


# Unstorable text -------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        asyncpg.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00'),
        asyncpg.UntranslatableCharacterError("unsupported Unicode escape sequence"),
        _encode_failure(),
    ],
    ids=["nul", "untranslatable", "surrogate"],
)
async def test_text_the_database_refuses_fails_the_activity_for_good(
    failure: BaseException,
) -> None:
    activities = IdentityActivities(FakePool(FakeConn(failure)), None, None, access_ttl_s=900)  # type: ignore[arg-type]
    data = RegisterAccountInput("6f1c1f8e-2b8c-4f43-9d4e-2a7c1d8e5b10", "a\x00@b.cd", "Ann", HASH)
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.create_account, data)
    assert raised.value.non_retryable and raised.value.type == "InvalidRegistration"
    assert "\x00" not in raised.value.message

    with pytest.raises(ApplicationError) as raised:
        revoke = RevokeApiClientInput("6f1c1f8e-2b8c-4f43-9d4e-2a7c1d8e5b10", "a\x00")
        await ActivityEnvironment().run(activities.mark_api_client_revoked, revoke)
    assert raised.value.non_retryable and raised.value.type == "InvalidArgument"


@pytest.mark.parametrize("roles", [["customer", "overlord"], []], ids=["unknown", "none"])
async def test_a_registration_with_an_unknown_role_fails_for_good_before_any_write(
    roles: list[str],
) -> None:
    conn = FakeConn(asyncpg.DataError("must not be reached"))
    activities = IdentityActivities(FakePool(conn), None, None, access_ttl_s=900)  # type: ignore[arg-type]
    data = RegisterAccountInput(
        "6f1c1f8e-2b8c-4f43-9d4e-2a7c1d8e5b10", "a@b.cd", "Ann", HASH, roles=roles
    )
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.create_account, data)
    assert raised.value.non_retryable and raised.value.type == "InvalidRegistration"


async def test_other_database_errors_stay_retryable() -> None:
    failure = asyncpg.DataError("something else")
    activities = IdentityActivities(FakePool(FakeConn(failure)), None, None, access_ttl_s=900)  # type: ignore[arg-type]
    data = RegisterAccountInput("6f1c1f8e-2b8c-4f43-9d4e-2a7c1d8e5b10", "a@b.cd", "Ann", HASH)
    with pytest.raises(asyncpg.DataError):
        await ActivityEnvironment().run(activities.create_account, data)


async def test_a_nul_in_a_sign_in_email_is_an_invalid_argument_not_a_query() -> None:
    pool = FakePool(FakeConn())
    service = TokenService(pool, None, None, None, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await service.sign_in_password("a\x00@b.cd", PASSWORD, [])
    assert pool.looked_up == []


async def test_sign_in_looks_the_email_up_as_registration_stored_it() -> None:
    # Registration stores emails.normalize(email) (Python's lowercasing): a lookup of
    # the raw "ΟΔΟΣ" would meet PostgreSQL's lower(), which makes its Σ U+03C3, not ς.
    pool = FakePool(FakeConn())
    service = TokenService(pool, None, None, None, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidCredentials):
        await service.sign_in_password(" ΟΔΟΣ@Example.GR ", PASSWORD, [])
    assert pool.looked_up == [("\u03bf\u03b4\u03bf\u03c2@example.gr",)]


# Who may create API clients ----------------------------------------------------------


class RecordingClients:
    def __init__(self) -> None:
        self.created: list[str] = []

    async def create(self, name: str, owner: str, scopes: list[str], key: str = "") -> Any:
        self.created.append(name)
        raise LookupError("stop here: the caller check passed")


@pytest.mark.parametrize("caller", ["", "catalog", "orders", "identity-admin"])
async def test_only_the_gateway_may_create_api_clients(caller: str) -> None:
    clients = RecordingClients()
    api = IdentityApi(None, None, None, clients)  # type: ignore[arg-type]
    request = CreateApiClientRequest(name="mint", scopes=["identity:admin"])

    async def as_peer(cn: str) -> None:
        token = grpc._peer_cn.set(cn)  # what agora.grpc sets from the peer's certificate
        try:
            await api.create_api_client(request)
        finally:
            grpc._peer_cn.reset(token)

    with pytest.raises(PermissionDenied):
        await as_peer(caller)
    assert clients.created == []
    with pytest.raises(LookupError):
        await as_peer("gateway")
    assert clients.created == ["mint"]


# Password-hash upgrades ----------------------------------------------------------------


class FakeKeys:
    def __init__(self) -> None:
        self.key = OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})

    async def signing_key(self) -> OKPKey:
        return self.key


class FakeSessions:
    async def start(self, _conn: Any, _account_id: str, _scopes: list[str]) -> NewSession:
        return NewSession("sid-1", "art_x", dt.datetime.now(dt.UTC))


async def sign_in_with(stored_hash: str, monkeypatch: pytest.MonkeyPatch) -> FakeConn:
    async def no_event(*_: Any, **__: Any) -> None:
        return None

    monkeypatch.setattr(signin, "append_signed_in", no_event)
    conn = FakeConn()
    row = {
        "account_id": "6f1c1f8e-2b8c-4f43-9d4e-2a7c1d8e5b10",
        "password_hash": stored_hash,
        "roles": ["customer"],
        "scopes": [],
        "disabled": False,
    }
    service = TokenService(
        FakePool(conn, row),  # type: ignore[arg-type]
        FakeKeys(),  # type: ignore[arg-type]
        FakeSessions(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        TokenPolicy("iss", "aud", 900),
    )
    await service.sign_in_password("ann@example.test", PASSWORD, [])
    return conn


async def test_a_sign_in_upgrades_a_hash_made_with_older_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    conn = await sign_in_with(weak, monkeypatch)
    ((query, args),) = conn.executed
    assert "UPDATE accounts SET password_hash" in query and "password_hash = $2" in query
    _, old, new = args
    assert old == weak, "guarded by the hash that was verified"
    assert PasswordHasher().verify(new, PASSWORD)
    assert not PasswordHasher().check_needs_rehash(new)


async def test_a_current_hash_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = await sign_in_with(PasswordHasher().hash(PASSWORD), monkeypatch)
    assert conn.executed == []


# Retired signing keys ---------------------------------------------------------------------


def test_a_retired_key_verifies_past_the_last_token_a_cached_key_signed() -> None:
    ttl = 900
    activities = IdentityActivities(None, None, None, access_ttl_s=ttl)  # type: ignore[arg-type]
    cache = dt.timedelta(seconds=KeyRing(None, None)._max_age)  # type: ignore[arg-type]
    # A process may sign with the key for up to `cache` after the retirement committed
    # (a refresh's transaction adds more); its token expires ttl later, and verifiers
    # accept it their clock leeway beyond that.
    leeway = max(identity_tokens.LEEWAY_S, gateway_tokens.LEEWAY_S)
    last_token_verified = dt.timedelta(seconds=ttl + leeway) + cache
    assert activities.key_overlap >= last_token_verified + dt.timedelta(seconds=20)
