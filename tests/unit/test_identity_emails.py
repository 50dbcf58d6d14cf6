"""One email normalization (agora/emails.py) wherever an email enters: registration,
sign-in (and its per-account rate-limit key), the admin command, the workflow id."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agora import emails, text
from contracts.agora.identity.v1 import Tokens
from gateway.routes import accounts as account_routes
from gateway.routes import auth as auth_routes
from gateway.schemas import PASSWORD_MIN_LENGTH, RegisterRequest, SignInRequest
from workers.identity import admin
from workflows.identity import register_workflow_id

GREEK = "ΟΔΟΣ@example.gr"  # the last Σ: Python lowers it to ς, PostgreSQL to U+03C3
DECOMPOSED = "E\u0301cole@Example.fr"  # "É" as E + combining acute (NFD)
COMPOSED = "\u00e9cole@example.fr"


# agora.emails ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("  Ann@Example.COM \n", "ann@example.com"),
        (GREEK, "οδος@example.gr"),
        (DECOMPOSED, COMPOSED),
        ("\u00c9cole@example.fr", COMPOSED),
        # No precomposed capital J with caron; lowered, "j" + caron composes to U+01F0.
        ("J\u030cosef@example.cz", "\u01f0osef@example.cz"),
    ],
)
def test_normalize_strips_composes_then_lowercases(given: str, normal: str) -> None:
    assert emails.normalize(given) == normal
    assert emails.normalize(normal) == normal


@pytest.mark.parametrize("value", ["a\x00@b.cd", "\ud800@b.cd", "x\udfff"])
def test_text_with_a_nul_or_a_lone_surrogate_is_not_storable(value: str) -> None:
    assert not text.storable(value)
    assert text.storable(text.shown(value))
    assert text.storable("ann@example.com") and text.storable(GREEK)


# The workflow id ----------------------------------------------------------------


def test_the_registration_id_of_an_ascii_email_is_unchanged() -> None:
    # Running registrations keep their ids: the digest is still of strip().lower().
    email = " Ops@Example.COM "
    old = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    assert register_workflow_id(email) == f"register-{old}"


def test_equivalent_emails_share_one_registration_id() -> None:
    assert register_workflow_id(DECOMPOSED) == register_workflow_id(COMPOSED.upper())
    assert register_workflow_id(DECOMPOSED) == register_workflow_id(COMPOSED)


def test_an_unstorable_email_still_gets_an_id() -> None:
    # The workflow, not the id's digest, refuses it.
    assert register_workflow_id("\ud800@b.cd").startswith("register-")


# The gateway ----------------------------------------------------------------------


class FakeUpstream:
    def __init__(self) -> None:
        self.started: list[tuple[Any, str]] = []
        self.sign_ins: list[Any] = []
        self.identity = SimpleNamespace(sign_in=self._sign_in)

    @asynccontextmanager
    async def call(self, _request: Any, _name: str) -> AsyncIterator[float]:
        yield 5.0

    async def execute_workflow(self, _run: Any, data: Any, *, id: str, **_: Any) -> Any:
        self.started.append((data, id))
        return SimpleNamespace(account_id=data.account_id)

    async def _sign_in(self, call: Any, **_: Any) -> Any:
        self.sign_ins.append(call)
        return SimpleNamespace(tokens=Tokens(access_token="at", token_type="Bearer"))


async def _stand_in_hash(_: str) -> str:
    return "$argon2id$stand-in"


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    fake = FakeUpstream()
    gw = SimpleNamespace(
        upstream=fake,
        passwords=SimpleNamespace(hash=_stand_in_hash),
        admitter=None,
    )
    monkeypatch.setattr(account_routes, "deps", lambda _: gw)
    monkeypatch.setattr(auth_routes, "deps", lambda _: gw)
    return fake


@pytest.fixture
def limited_keys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    keys: list[str] = []

    async def admit_or_refuse(_admitter: Any, _route_class: str, key: str, **_: Any) -> None:
        keys.append(key)

    monkeypatch.setattr(auth_routes, "admit_or_refuse", admit_or_refuse)
    return keys


async def test_registration_stores_and_keys_the_normalized_email(upstream: FakeUpstream) -> None:
    body = RegisterRequest(email=DECOMPOSED, password="x" * 12, display_name="Ann")
    answer = await account_routes.register(None, body)  # type: ignore[arg-type]
    ((data, workflow_id),) = upstream.started
    assert data.email == answer.email == COMPOSED
    assert workflow_id == register_workflow_id(COMPOSED)


async def test_sign_in_sends_the_normalized_email_and_limits_by_it(
    upstream: FakeUpstream, limited_keys: list[str]
) -> None:
    for email in (GREEK, DECOMPOSED, COMPOSED.upper()):
        body = SignInRequest(email=email, password="p")
        await auth_routes.sign_in(None, body)  # type: ignore[arg-type]
    sent = [call.password.email for call in upstream.sign_ins]
    assert sent == ["οδος@example.gr", COMPOSED, COMPOSED]
    # One bucket per account, however its email was typed.
    assert limited_keys == [f"email:{email}" for email in sent]


async def test_every_sign_in_path_limits_one_account_by_one_key(
    upstream: FakeUpstream, limited_keys: list[str]
) -> None:
    # The codec's form sign-in (gateway/routes/codec.py) passes the email as typed.
    for email in (DECOMPOSED, COMPOSED.upper(), f" {COMPOSED} "):
        await auth_routes.admit_account_sign_in(None, email)  # type: ignore[arg-type]
    assert limited_keys == [f"email:{COMPOSED}"] * 3


# The admin command ------------------------------------------------------------------


class FakeTemporal:
    def __init__(self) -> None:
        self.started: list[tuple[Any, str]] = []

    async def execute_workflow(self, _run: Any, data: Any, *, id: str, **_: Any) -> Any:
        self.started.append((data, id))
        return SimpleNamespace(created=True)


@pytest.fixture
def temporal(monkeypatch: pytest.MonkeyPatch) -> FakeTemporal:
    fake = FakeTemporal()

    async def connect(*_: Any, **__: Any) -> FakeTemporal:
        return fake

    monkeypatch.setattr(admin.temporal, "connect", connect)
    return fake


async def test_the_admin_command_registers_the_normalized_email(temporal: FakeTemporal) -> None:
    await admin.register(None, f" {DECOMPOSED} ", "a long enough password", "admin")  # type: ignore[arg-type]
    ((data, workflow_id),) = temporal.started
    assert data.email == COMPOSED and workflow_id == register_workflow_id(COMPOSED)
    assert data.roles == ["admin"]


async def test_the_admin_command_refuses_a_password_registration_would(
    temporal: FakeTemporal,
) -> None:
    short = "x" * (PASSWORD_MIN_LENGTH - 1)
    with pytest.raises(admin.Refused, match="at least"):
        await admin.register(None, "ops@example.com", short, "admin")  # type: ignore[arg-type]
    assert temporal.started == []
    await admin.register(None, "ops@example.com", short + "x", "admin")  # type: ignore[arg-type]
    assert [data.email for data, _ in temporal.started] == ["ops@example.com"]


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("ops@localhost", "a long enough password"),  # no dotted domain: sign-in's 422
        (f"{'o' * 250}@example.com", "a long enough password"),  # over 254 characters
        ("ops@example.com", "x" * 300),  # sign-in takes at most 256
    ],
    ids=["undotted-domain", "long-email", "long-password"],
)
async def test_the_admin_command_refuses_what_sign_in_would_refuse(
    temporal: FakeTemporal, email: str, password: str
) -> None:
    with pytest.raises(admin.Refused):
        await admin.register(None, email, password, "admin")  # type: ignore[arg-type]
    assert temporal.started == []
    # The longest password sign-in takes is taken here too.
    await admin.register(None, "ops@example.com", "x" * 256, "admin")  # type: ignore[arg-type]
    assert [data.email for data, _ in temporal.started] == ["ops@example.com"]


async def test_the_demo_admin_password_file_is_created_private(
    temporal: FakeTemporal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Created 0600, never made so afterwards: with chmod doing nothing and a
    # permissive umask, a written-then-chmodded file would be world-readable.
    monkeypatch.setattr(Path, "chmod", lambda *_, **__: None)
    previous = os.umask(0o022)
    try:
        await admin.ensure_demo_admin(SimpleNamespace(state_dir=tmp_path))  # type: ignore[arg-type]
    finally:
        os.umask(previous)
    path = admin.demo_password_file(SimpleNamespace(state_dir=tmp_path))  # type: ignore[arg-type]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    assert len(password) >= PASSWORD_MIN_LENGTH

    await admin.ensure_demo_admin(SimpleNamespace(state_dir=tmp_path))  # type: ignore[arg-type]
    assert path.read_text().strip() == password, "an existing password is kept"
    assert [data.email for data, _ in temporal.started] == [admin.DEMO_ADMIN_EMAIL] * 2
