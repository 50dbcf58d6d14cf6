"""Platform scopes and the scopes each account role grants.

Shared by identity (which puts scopes into access tokens) and the gateway
(which requires them per route), so both read the same names from one table.
"""

from __future__ import annotations

from collections.abc import Iterable

PROFILE = "profile"
CATALOG_READ = "catalog:read"
CATALOG_WRITE = "catalog:write"
ORDERS_READ = "orders:read"
ORDERS_WRITE = "orders:write"
INVENTORY_WRITE = "inventory:write"
AUDIT_READ = "audit:read"
ADMIN = "admin"
IDENTITY_ADMIN = "identity:admin"
# Reads workflow payloads in clear through the codec server (Temporal web UI).
SUPPORT = "support"

CUSTOMER_SCOPES: tuple[str, ...] = (PROFILE, CATALOG_READ, ORDERS_READ, ORDERS_WRITE)

# Role (lower-case, as stored on the account) -> scopes it grants. The "service"
# role grants nothing by itself: an API client gets exactly the scopes it was created with.
SERVICE_ROLE = "service"
ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "customer": CUSTOMER_SCOPES,
    "admin": (
        *CUSTOMER_SCOPES,
        ADMIN,
        IDENTITY_ADMIN,
        CATALOG_WRITE,
        INVENTORY_WRITE,
        AUDIT_READ,
    ),
    "auditor": (PROFILE, AUDIT_READ),
    # Staff who inspect stuck orders in the Temporal UI: decode payloads, nothing else.
    "support": (PROFILE, SUPPORT),
    SERVICE_ROLE: (),
}

ALL_SCOPES: frozenset[str] = frozenset(s for scopes in ROLE_SCOPES.values() for s in scopes)


class UnknownScope(ValueError):
    """A scope name that is not one of the platform's scopes."""


def scopes_for(roles: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The sorted union of the roles' scopes and any extra scopes granted one by one."""
    granted: set[str] = set(extra)
    for role in roles:
        granted.update(ROLE_SCOPES.get(role.lower(), ()))
    return sorted(granted)


def narrow(granted: Iterable[str], requested: Iterable[str]) -> list[str]:
    """The requested subset of `granted` (all of it when nothing is requested).

    Raises UnknownScope naming what was requested but not granted: asking for
    more than one holds is an error, not a silent downgrade.
    """
    held = set(granted)
    wanted = set(requested)
    if not wanted:
        return sorted(held)
    missing = wanted - held
    if missing:
        raise UnknownScope(f"scope not granted: {' '.join(sorted(missing))}")
    return sorted(wanted)


def validate(scopes: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated scopes; raises UnknownScope for a name the platform does not know."""
    unique = set(scopes)
    unknown = unique - ALL_SCOPES
    if unknown:
        raise UnknownScope(f"unknown scope: {' '.join(sorted(unknown))}")
    return sorted(unique)
