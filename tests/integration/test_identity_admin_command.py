"""The operator's `python -m workers.identity.admin create`, run as an operator runs it
(its own process: it sets up logging of its own), against the running identity."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Services

pytestmark = pytest.mark.integration


def create(email: str, role: str, password: Path) -> subprocess.CompletedProcess[str]:
    command = ["create", "--email", email, "--role", role, "--password-file", str(password)]
    return subprocess.run(
        [sys.executable, "-m", "workers.identity.admin", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_creating_an_existing_account_again_says_it_changed_nothing(
    services: Services, tmp_path: Path
) -> None:
    # The second run asks for another role and password: neither is applied, and the
    # command must not read as if the account now had them.
    services("identity")
    email = f"ops-{uuid.uuid4().hex[:10]}@example.com"
    password = tmp_path / "password"
    password.write_text("correct horse battery staple")
    first = create(email, "support", password)
    assert (first.returncode, first.stdout.strip()) == (0, f"{email} (support) created"), first

    password.write_text("another horse battery staple")
    again = create(email, "admin", password)
    assert (again.returncode, again.stdout.strip()) == (
        0,
        f"{email} already exists; its roles and password are unchanged",
    ), again
