"""Roles grant scopes from one table; sign-in narrows to what was asked for."""

from __future__ import annotations

import pytest

from agora import scopes


def test_customer_gets_profile_catalog_read_and_orders() -> None:
    assert scopes.scopes_for(["customer"]) == [
        "catalog:read",
        "orders:read",
        "orders:write",
        "profile",
    ]


def test_admin_gets_everything_a_customer_has_plus_admin_scopes() -> None:
    admin = set(scopes.scopes_for(["admin"]))
    assert set(scopes.scopes_for(["customer"])) < admin
    assert {"admin", "identity:admin", "catalog:write", "inventory:write", "audit:read"} <= admin


def test_auditor_reads_audit_and_profile_only() -> None:
    assert scopes.scopes_for(["AUDITOR"]) == ["audit:read", "profile"]


def test_service_role_grants_nothing_by_itself_but_extra_scopes_add_up() -> None:
    assert scopes.scopes_for(["service"]) == []
    assert scopes.scopes_for(["service"], ["catalog:read"]) == ["catalog:read"]


def test_narrow_returns_all_granted_when_nothing_is_requested() -> None:
    assert scopes.narrow(["b", "a"], []) == ["a", "b"]


def test_narrow_returns_the_requested_subset() -> None:
    assert scopes.narrow(["profile", "orders:read"], ["profile"]) == ["profile"]


def test_narrow_refuses_a_scope_not_granted() -> None:
    with pytest.raises(scopes.UnknownScope, match="identity:admin"):
        scopes.narrow(["profile"], ["profile", "identity:admin"])


def test_validate_refuses_unknown_scopes_and_dedupes_known_ones() -> None:
    assert scopes.validate(["catalog:read", "catalog:read"]) == ["catalog:read"]
    with pytest.raises(scopes.UnknownScope, match="root"):
        scopes.validate(["root"])
