"""The verify CLI says how far a long walk is, so an operator can tell slow from stuck."""

from __future__ import annotations

import logging
import math

import pytest

from workers.audit import verify


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int, int]]:
    """(sequence, records checked, last sequence) of each progress line."""
    return [
        (r.__dict__["sequence"], r.__dict__["records_checked"], r.__dict__["last_sequence"])
        for r in caplog.records
        if r.getMessage() == "audit verification progress"
    ]


def test_the_walks_progress_is_logged_every_hundred_thousand_rows(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "PROGRESS_EVERY_S", math.inf)
    progress = verify.ProgressLog()
    with caplog.at_level(logging.INFO, logger="workers.audit.verify"):
        for checked in range(5000, 250_001, 5000):  # one call per chunk the walk checked
            progress(checked + 10, checked, 250_010)
    assert logged(caplog) == [(100_010, 100_000, 250_010), (200_010, 200_000, 250_010)]


def test_a_slow_walk_is_logged_by_time_before_it_reaches_the_row_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "PROGRESS_EVERY_S", 0.0)  # every call is past due
    progress = verify.ProgressLog()
    with caplog.at_level(logging.INFO, logger="workers.audit.verify"):
        progress(5000, 5000, 1_000_000)
        progress(10_000, 10_000, 1_000_000)
    assert logged(caplog) == [(5000, 5000, 1_000_000), (10_000, 10_000, 1_000_000)]
