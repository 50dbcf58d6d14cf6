"""`make chaos`'s verdict: the stores consistent, and the clients served again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bench.chaos_report import ChaosResult, FaultRecord, WindowStats, markdown
from bench.invariants import Verdict

QUIET = WindowStats(1, 0, 1, 0, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), {})


def _result(*, recovered: dict[str, float], order_failed: int) -> ChaosResult:
    kill = FaultRecord("kill postgres", killed_at=10.0, back_at=14.0, recovered=recovered)
    by_kind: dict[str, Any] = {
        "order": {"requests": 100, "ok": 100 - order_failed, "failed": order_failed},
        "read": {"requests": 300, "ok": 300, "failed": 0},
    }
    return ChaosResult(
        started=datetime(2026, 11, 29, tzinfo=UTC),
        meta={
            "started": "2026-11-29T00:00:00Z",
            "profile": "dev",
            "cpus": 2,
            "mix": "orders and reads",
            "down_s": 5,
            "quiet_s": 20,
        },
        baseline=QUIET,
        faults=[(kill, QUIET)],
        totals={"by_kind": by_kind, "final_errors": {}},
        verdicts=[Verdict("orders", True, "none lost"), Verdict("payments", True, "none twice")],
    )


@pytest.mark.parametrize(
    ("recovered", "order_failed", "named"),
    [
        ({"order": 15.0, "read": 15.0}, 0, None),
        # Every store consistent and no order served after the kill: it passed.
        ({"read": 15.0}, 0, "no order succeeded after kill postgres"),
        ({"order": 15.0, "read": 15.0}, 3, "3 order requests failed after the client's retries"),
    ],
    ids=["served-again", "orders-never-back", "orders-failed-after-retries"],
)
def test_a_run_passes_only_when_orders_are_served_again(
    recovered: dict[str, float], order_failed: int, named: str | None
) -> None:
    result = _result(recovered=recovered, order_failed=order_failed)
    assert result.ok is (named is None)
    if named is not None:
        assert named in result.failures
        assert f"**FAIL** ({named}" in markdown(result)
