"""Documented variables take effect; every variable agora/config.py reads is documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from agora import config

CONFIG_SOURCE = Path(config.__file__)
# Parsed once, as the module is collected: CPython 3.11's AST constructor keeps one
# recursion count for the whole process (gh-106905, fixed in 3.11.8), and a parse
# while a test's background thread converts another tree failed in CI with
# "SystemError: AST constructor recursion depth mismatch".
CONFIG_TREE = ast.parse(CONFIG_SOURCE.read_text())
CONFIG_DOC = config.REPO_ROOT / "docs" / "configuration.md"


def test_catalog_cache_ttl_and_search_index_settings_come_from_the_environment() -> None:
    settings = config.load(
        {
            "AGORA_CATALOG_CACHE_TTL_S": "42",
            "AGORA_SEARCH_INDEX_PREFIX": "shop-products",
            "AGORA_SEARCH_REFRESH_INTERVAL": "1s",
        }
    )
    assert settings.catalog_cache_ttl_s == 42
    assert settings.search_index_prefix == "shop-products"
    assert settings.search_refresh_interval == "1s"


def _name_read(node: ast.expr) -> str | None:
    """`AGORA_X` for a literal name, `AGORA_X_` for a family built as f"AGORA_X_{...}"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            return None
        text = first.value
    else:
        return None
    return text if text.startswith("AGORA_") else None


def variables_read_by_config() -> set[str]:
    """Names passed to env.get / env[...] / key.startswith / key.removeprefix in agora/config.py.

    A name ending in "_" is a family (AGORA_PORT_<NAME>, AGORA_DB_PASSWORD_<SERVICE>, ...).
    """
    names = set()
    for node in ast.walk(CONFIG_TREE):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in ("get", "startswith", "removeprefix"):
                name = _name_read(node.args[0])
                if name:
                    names.add(name)
        elif isinstance(node, ast.Subscript):
            name = _name_read(node.slice)
            if name:
                names.add(name)
    return names


def variables_documented() -> set[str]:
    """The names in the first column of docs/configuration.md's variable table."""
    names = set()
    for line in CONFIG_DOC.read_text().splitlines():
        cells = line.split("|")
        if line.startswith("| `AGORA_") and len(cells) > 2:
            names.update(re.findall(r"`(AGORA_[^`]+)`", cells[1]))
    return names


def test_the_config_source_scan_finds_names_and_families() -> None:
    read = variables_read_by_config()
    assert {"AGORA_PROFILE", "AGORA_HOST", "AGORA_JWT_ISSUER"} <= read
    assert {"AGORA_PORT_", "AGORA_RATE_LIMIT_", "AGORA_DB_PASSWORD_", "AGORA_GRPC_HOST_"} <= read


def test_every_variable_config_reads_is_in_docs_configuration() -> None:
    documented = variables_documented()
    missing = []
    for name in sorted(variables_read_by_config()):
        if name.endswith("_"):
            # A family is documented as e.g. `AGORA_PORT_<NAME>`.
            found = any(doc.startswith(f"{name}<") for doc in documented)
        else:
            found = name in documented
        if not found:
            missing.append(name + ("<...>" if name.endswith("_") else ""))
    assert not missing, f"read in agora/config.py but not in docs/configuration.md: {missing}"


def test_a_catalog_cache_ttl_below_one_second_is_refused_at_start() -> None:
    # PX 0 is refused by Redis: every write's cache refresh would fail, for ever.
    with pytest.raises(ValueError, match="AGORA_CATALOG_CACHE_TTL_S"):
        config.load({"AGORA_CATALOG_CACHE_TTL_S": "0"})


DOC_ROW = re.compile(r"^\| `(AGORA_[A-Z0-9_]+)` \| `([^`<]*)`")


def documented_defaults() -> dict[str, str]:
    """Each variable of docs/configuration.md whose default column starts with a
    literal value (not a placeholder like `<state>/…` nor another variable's name),
    and that value."""
    rows = (DOC_ROW.match(line) for line in CONFIG_DOC.read_text().splitlines())
    read = variables_read_by_config()
    return {
        row[1]: row[2] for row in rows if row and row[1] in read and not row[2].startswith("AGORA_")
    }


def test_enough_documented_defaults_are_checked() -> None:
    assert len(documented_defaults()) >= 20


@pytest.mark.parametrize("name", sorted(documented_defaults()))
def test_a_variable_set_to_its_documented_default_changes_nothing(name: str) -> None:
    # The table is the contract: setting the default it names must be a no-op.
    value = documented_defaults()[name]
    assert config.load({name: value}) == config.load({}), f"{name}: documented {value!r}"
