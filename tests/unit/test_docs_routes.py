"""docs/gateway.md lists every route of the route table, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from agora.config import Settings
from gateway.routes import all_routes

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
ROW = re.compile(
    r"^\| (GET|POST|PUT|DELETE|PATCH|OPTIONS) \| `([^`]+)` \| ([^|]+) \| ([^|]+) \|", re.M
)
# A row's method, path and last column (what the route does: its summary).
SUMMARY = re.compile(
    r"^\| (GET|POST|PUT|DELETE|PATCH|OPTIONS) \| `([^`]+)` \|.* \| ([^|]+) \|$", re.M
)


def test_the_routes_table_in_the_docs_is_the_route_table() -> None:
    documented = {(m, path, rate.strip()) for m, path, _, rate in ROW.findall(DOC.read_text())}
    actual = {(r.method, r.path, r.route_class or "—") for r in all_routes()}
    assert documented == actual


def test_the_refresh_route_says_when_a_used_token_is_exchanged_again() -> None:
    # Within the reuse grace a used refresh token whose successor is unused is exchanged
    # again (docs/identity.md), so "a used one revokes its whole session" alone is wrong.
    refresh = next(r for r in all_routes() if r.path == "/v1/auth/refresh")
    grace = f"AGORA_IDENTITY_REFRESH_REUSE_GRACE_S, {Settings.refresh_reuse_grace_s} s"
    assert grace in refresh.summary and "docs/identity.md" in refresh.summary
    documented = {(m, path): what.strip() for m, path, what in SUMMARY.findall(DOC.read_text())}
    assert documented[(refresh.method, refresh.path)] == refresh.summary
