"""`make run` restarts a service when anything it runs changed, not only its Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack import platform


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["asyncpg"]\n')
    (tmp_path / "activities" / "migrations" / "orders").mkdir(parents=True)
    (tmp_path / "activities" / "migrations" / "orders" / "0001_orders.sql").write_text(
        "select 1;\n"
    )
    (tmp_path / "activities" / "orders.py").write_text("pass\n")
    monkeypatch.setattr(platform, "REPO_ROOT", tmp_path)
    return tmp_path


def test_a_new_sql_migration_changes_the_code_fingerprint(repo: Path) -> None:
    before = platform.code_fingerprint()
    (repo / "activities" / "migrations" / "orders" / "0002_index.sql").write_text("select 2;\n")
    assert platform.code_fingerprint() != before


def test_a_dependency_change_in_pyproject_changes_the_code_fingerprint(repo: Path) -> None:
    before = platform.code_fingerprint()
    (repo / "pyproject.toml").write_text('[project]\ndependencies = ["asyncpg>=0.30"]\n')
    assert platform.code_fingerprint() != before
