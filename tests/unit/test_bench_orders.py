"""The orders benchmark reads the saga's CONFIRMED moment from the order's status history."""

from __future__ import annotations

from datetime import UTC, datetime

from bench.orders import _confirmed_at


def test_the_confirmed_moment_is_the_confirmed_changes_timestamp() -> None:
    order = {
        "status": "COMPLETED",
        "status_history": [
            {"status": "PENDING", "changed_at": "2026-11-25T10:00:00.010000+00:00"},
            {"status": "CONFIRMED", "changed_at": "2026-11-25T10:00:00.085000+00:00"},
            {"status": "COMPLETED", "changed_at": "2026-11-25T10:00:00.120000+00:00"},
        ],
    }
    assert _confirmed_at(order) == datetime(2026, 11, 25, 10, 0, 0, 85000, tzinfo=UTC)


def test_an_order_that_never_confirmed_has_no_confirmed_moment() -> None:
    rejected = {
        "status": "REJECTED",
        "status_history": [
            {"status": "PENDING", "changed_at": "2026-11-25T10:00:00+00:00"},
            {"status": "REJECTED", "changed_at": "2026-11-25T10:00:01+00:00"},
        ],
    }
    assert _confirmed_at(rejected) is None
    assert _confirmed_at({}) is None
