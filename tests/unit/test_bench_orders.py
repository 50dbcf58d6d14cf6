"""The orders benchmark reads the saga's CONFIRMED moment from the order's status history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bench.orders import _confirmed_at, sustained_sound


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


def _sustained(**changes: Any) -> dict[str, Any]:
    run = {
        "accepted": 351,
        "completed": 351,
        "refused": 0,
        "checks": [{"name": "orders", "ok": True}, {"name": "payments", "ok": True}],
    }
    return {**run, **changes}


@pytest.mark.parametrize(
    ("changes", "sound"),
    [
        ({}, True),
        # Rejected under overload (PAYMENT_FAILED): final, nothing charged twice, and
        # counted as sustained orders before.
        ({"completed": 350}, False),
        ({"refused": 1}, False),  # a POST answered 5xx
        ({"checks": [{"name": "payments", "ok": False}]}, False),
    ],
    ids=["all-completed", "one-rejected", "one-refused", "a-check-failed"],
)
def test_the_sustained_rate_counts_only_when_every_order_was_served(
    changes: dict[str, Any], sound: bool
) -> None:
    assert sustained_sound(_sustained(**changes)) is sound
