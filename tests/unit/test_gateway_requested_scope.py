"""A requested scope (sign-in, client credentials) is scope names separated by spaces,
at most 512 characters: anything else is refused at the gateway, never sent to
identity (which names in its refusal every scope it does not grant)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.schemas import ClientCredentialsRequest, SignInRequest

GRANT = {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"}


@pytest.mark.parametrize(
    "scope",
    ["profile", "profile orders:read", "", "  profile  catalog:read ", "identity:admin " * 30],
)
def test_scope_names_separated_by_spaces_are_accepted(scope: str) -> None:
    assert SignInRequest(email="ann@example.com", password="p", scope=scope).scope == scope
    assert ClientCredentialsRequest(**GRANT, scope=scope).scope == scope  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "scope",
    [
        " ".join(f"ééé{i}" for i in range(3000)),  # made-up, non-ASCII
        "profile " * 100,  # well-formed, too long
        "Profile",
        "profile\torders:read",
        "profile\n",
        "orders:read:all",
        "orders:",
    ],
)
def test_an_oversized_or_ill_formed_scope_is_refused(scope: str) -> None:
    with pytest.raises(ValidationError):
        SignInRequest(email="ann@example.com", password="p", scope=scope)
    with pytest.raises(ValidationError):
        ClientCredentialsRequest(**GRANT, scope=scope)  # type: ignore[arg-type]
