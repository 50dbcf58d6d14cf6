"""Checkpoints keep up with the log at the platform's target load: one run verifies and
signs at most CHECKPOINT_MAX_ROWS past the last checkpoint, once per interval, so the
log may grow by no more than that per interval or the unsigned tail grows for good."""

from __future__ import annotations

from activities.audit import CHECKPOINT_MAX_ROWS
from agora import config

TARGET_ORDERS_PER_S = 30  # DESIGN §9
EVENTS_PER_ORDER = 8  # an order's events reaching audit (bench/audit.py counts as many)


def test_a_checkpoint_interval_signs_more_rows_than_the_target_load_appends() -> None:
    interval_s = config.load({}).audit_checkpoint_interval_s
    signable_per_s = CHECKPOINT_MAX_ROWS / interval_s
    assert signable_per_s >= 2 * TARGET_ORDERS_PER_S * EVENTS_PER_ORDER, signable_per_s
