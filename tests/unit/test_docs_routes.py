"""docs/gateway.md lists every route of the route table, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.routes import all_routes

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
ROW = re.compile(
    r"^\| (GET|POST|PUT|DELETE|PATCH|OPTIONS) \| `([^`]+)` \| ([^|]+) \| ([^|]+) \|", re.M
)


def test_the_routes_table_in_the_docs_is_the_route_table() -> None:
    documented = {(m, path, rate.strip()) for m, path, _, rate in ROW.findall(DOC.read_text())}
    actual = {(r.method, r.path, r.route_class or "—") for r in all_routes()}
    assert documented == actual
