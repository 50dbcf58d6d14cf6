"""Inventory's request validation and its idempotency records, without a database."""

from __future__ import annotations

import pytest

from workers.inventory import idempotency
from workers.inventory.errors import (
    InvalidInventoryRequest,
    InvalidQuantity,
    OutOfStock,
    Shortage,
    UnknownSku,
)
from workers.inventory.model import (
    ReserveResult,
    StockLine,
    StockSnapshot,
    check_key,
    check_quantity,
    check_sku,
    merge_lines,
)
from workers.inventory.reservations import reserve


def test_lines_are_merged_per_sku_and_sorted_in_lock_order() -> None:
    merged = merge_lines([StockLine("B", 1), StockLine("A", 2), StockLine("B", 3)])
    assert merged == [StockLine("A", 2), StockLine("B", 4)]


@pytest.mark.parametrize(
    "lines",
    [[], [StockLine("A", 0)], [StockLine("A", -1)], [StockLine("", 1)], [StockLine("a b", 1)]],
)
def test_malformed_lines_are_refused(lines: list[StockLine]) -> None:
    with pytest.raises((InvalidInventoryRequest, InvalidQuantity)):
        merge_lines(lines)


@pytest.mark.parametrize("sku", ["SKU-1", "a.b_c:d", "X" * 64])
def test_ordinary_skus_pass(sku: str) -> None:
    assert check_sku(sku) == sku


@pytest.mark.parametrize("sku", ["", "-leading", "has space", "x/y", "X" * 65, "é"])
def test_skus_that_cannot_be_catalog_keys_are_refused(sku: str) -> None:
    with pytest.raises(InvalidInventoryRequest):
        check_sku(sku)


@pytest.mark.parametrize("key", ["order-\x00", "restock-\ud800", ""])
def test_keys_postgresql_cannot_store_are_refused_as_the_caller_s_mistake(key: str) -> None:
    # A NUL (SQLSTATE 22021) or a lone surrogate (asyncpg cannot encode it) failed the
    # first statement as a retryable error: the activity was retried for ever.
    with pytest.raises(InvalidInventoryRequest):
        check_key(key, "key")


class _NoDatabase:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the request reached the database ({name})")


async def test_an_order_id_postgresql_cannot_store_is_refused_before_any_query() -> None:
    with pytest.raises(InvalidInventoryRequest, match="order_id"):
        await reserve(
            _NoDatabase(),  # type: ignore[arg-type]
            "reservation-1",
            [StockLine("SKU-1", 1)],
            60,
            order_id="order-\x00",
        )


def test_zero_is_a_quantity_only_where_allowed() -> None:
    assert check_quantity(0, allow_zero=True) == 0
    with pytest.raises(InvalidQuantity):
        check_quantity(0)


def test_the_fingerprint_tells_a_retry_from_a_different_request() -> None:
    lines = [StockLine("A", 1)]
    assert idempotency.fingerprint("o", lines) == idempotency.fingerprint("o", [StockLine("A", 1)])
    assert idempotency.fingerprint("o", lines) != idempotency.fingerprint("o", [StockLine("A", 2)])


def test_a_stored_result_replays_as_the_same_value() -> None:
    level = StockSnapshot("A", 5, 1, 4, 3, "2030-01-01T00:00:00+00:00")
    result = ReserveResult("r", "held", "2030-01-01T00:10:00+00:00", [StockLine("A", 1)], [level])
    assert idempotency.replay(idempotency.outcome(result), ReserveResult) == result


def test_a_stored_rejection_replays_as_the_same_error() -> None:
    stored = idempotency.rejection(OutOfStock([Shortage("A", 2, 1)]))
    with pytest.raises(OutOfStock) as raised:
        idempotency.replay(stored, ReserveResult)
    assert raised.value.shortages == [Shortage("A", 2, 1)]
    assert "A (requested 2, available 1)" in raised.value.detail
    with pytest.raises(UnknownSku):
        idempotency.replay(idempotency.rejection(UnknownSku(["Z"])), ReserveResult)


def test_a_refusal_never_reports_enough_stock_freed_after_it() -> None:
    # The count is read after the refused UPDATE, in a new snapshot: a release that
    # committed in between can show more free than was asked for.
    assert Shortage.after_refusal("SKU-1", 2, 3) == Shortage("SKU-1", 2, 1)
    assert Shortage.after_refusal("SKU-1", 5, 0) == Shortage("SKU-1", 5, 0)
    assert Shortage.after_refusal("SKU-1", 5, 4) == Shortage("SKU-1", 5, 4)
