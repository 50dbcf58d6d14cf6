"""A chaos run's invariant that does not hold yet says what it sees while it re-polls."""

from __future__ import annotations

import pytest

from bench import invariants
from bench.invariants import _Outcome


async def test_a_check_still_polling_reports_its_latest_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(invariants, "POLL_S", 0.0)
    monkeypatch.setattr(invariants, "REPORT_S", 0.0)  # report at every re-poll
    outcomes = iter(
        [_Outcome(False, "2 not final"), _Outcome(False, "1 not final"), _Outcome(True, "ok")]
    )

    async def settling() -> _Outcome:
        return next(outcomes)

    said: list[str] = []
    [verdict] = await invariants.hold([("orders", settling)], within_s=600, progress=said.append)
    assert verdict.ok
    assert [line.split(": not yet after")[0] for line in said[:2]] == ["  ...  orders"] * 2
    assert [line.rsplit(": ", 1)[1] for line in said] == ["2 not final", "1 not final", "ok"]
