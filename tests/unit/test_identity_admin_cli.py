"""`python -m workers.identity.admin create` run by a script: the password on stdin."""

from __future__ import annotations

import io

import pytest

from workers.identity import admin


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    calls: list[tuple[str, str, str]] = []

    async def register(_: object, email: str, password: str, role: str) -> bool:
        calls.append((email, password, role))
        return True

    monkeypatch.setattr(admin, "register", register)
    return calls


def create(monkeypatch: pytest.MonkeyPatch, stdin: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))  # not a terminal
    return admin.main(["create", "--email", "ops@example.com", "--role", "admin"])


def test_a_password_piped_on_stdin_is_read_without_a_prompt(
    monkeypatch: pytest.MonkeyPatch,
    registered: list[tuple[str, str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert create(monkeypatch, "a long ops password\n") == 0
    assert registered == [("ops@example.com", "a long ops password", "admin")]
    assert "created" in capsys.readouterr().out


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_no_password_is_a_clear_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    registered: list[tuple[str, str, str]],
    capsys: pytest.CaptureFixture[str],
    stdin: str,
) -> None:
    # A script or CI with nothing on stdin: getpass raised EOFError, logged as a crash.
    assert create(monkeypatch, stdin) == 2
    assert "no password given" in capsys.readouterr().err
    assert registered == []
