"""No migration statement returns rows: yoyo prints a statement's rows to stdout as a
table, and in a service process that table lands among its JSON log lines."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlparse
from yoyo.migrations import read_sql_migration

from agora.db import MIGRATIONS_ROOT

SQL_MIGRATIONS = sorted(MIGRATIONS_ROOT.glob("*/[0-9][0-9][0-9][0-9]_*.sql"))


def test_there_are_migrations_to_read() -> None:
    assert any(path.parent.name == "audit" for path in SQL_MIGRATIONS)


@pytest.mark.parametrize("path", SQL_MIGRATIONS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_statement_is_a_query(path: Path) -> None:
    # Split as yoyo splits them, so each is one statement yoyo executes.
    _, _, statements = read_sql_migration(str(path))
    queries = [s for s in statements if sqlparse.parse(s)[0].get_type() == "SELECT"]
    assert not queries, f"{path.name}: use PERFORM inside a DO block: {queries}"
