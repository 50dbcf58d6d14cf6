"""A category's listing is a bounded range of the (category, sku) index.

Started at ("", "") with no upper bound, and the category only a filter (`$1 = ''
OR ...`, never an index condition of a generic plan), a first page read every
product listed before the category and a last page every one after it. The plans
are PostgreSQL's; what is checked here is the range the query gives it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from workers.catalog.reads import CatalogReads, encode_cursor


class Pool:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.calls.append((sql, args))
        return []


class NoCache:
    async def get_json(self, _: str) -> None:
        return None

    async def set_json(self, *_: Any) -> None: ...


def reads() -> tuple[CatalogReads, Pool]:
    pool = Pool()
    return CatalogReads(pool, NoCache()), pool  # type: ignore[arg-type]


def bounds(sql: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """The index range the statement's conditions give, with its arguments in."""
    values = {f"${n}": value for n, value in enumerate(args, start=1)}
    where = " ".join(sql.split())
    lower = re.search(r"\(category, sku\) > \((\$\d), (\$\d)\)", where)
    upper = re.search(r"category < (\$\d) \|\| '0'", where)
    assert lower is not None
    return {
        "from": (values[lower.group(1)], values[lower.group(2)]),
        "below": values[upper.group(1)] + "0" if upper else None,
        "only a filter": "= ''" in where,
    }


@pytest.mark.parametrize(
    ("cursor", "start"),
    [
        ("", ("toys/lego", "")),
        (encode_cursor("toys/lego/city", "SKU-9"), ("toys/lego/city", "SKU-9")),
        # A cursor from before the category (forged, or another listing's) starts it.
        (encode_cursor("books", "SKU-1"), ("toys/lego", "")),
    ],
)
async def test_a_category_page_is_a_bounded_range(cursor: str, start: tuple[str, str]) -> None:
    catalog, pool = reads()
    await catalog.list_page("toys/lego", False, 50, cursor)
    [(sql, args)] = pool.calls
    assert bounds(sql, args) == {"from": start, "below": "toys/lego0", "only a filter": False}


async def test_the_whole_catalog_is_listed_from_the_start() -> None:
    catalog, pool = reads()
    await catalog.list_page("", False, 50, "")
    [(sql, args)] = pool.calls
    assert bounds(sql, args) == {"from": ("", ""), "below": None, "only a filter": False}
