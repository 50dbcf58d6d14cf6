"""The operator's `workers.identity.admin create` against the running identity workflow."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Services
from workers.identity import admin

pytestmark = pytest.mark.integration


def test_creating_an_existing_account_again_says_it_changed_nothing(
    services: Services, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The second run asks for another role and password: neither is applied, and the
    # command must not read as if the account now had them.
    services("identity")
    email = f"ops-{uuid.uuid4().hex[:10]}@example.com"
    password = tmp_path / "password"
    password.write_text("correct horse battery staple")
    assert (
        admin.main(
            ["create", "--email", email, "--role", "support", "--password-file", str(password)]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == f"{email} (support) created"

    password.write_text("another horse battery staple")
    assert (
        admin.main(
            ["create", "--email", email, "--role", "admin", "--password-file", str(password)]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == (
        f"{email} already exists; its roles and password are unchanged"
    )
