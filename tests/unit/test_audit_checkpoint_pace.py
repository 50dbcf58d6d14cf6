"""The checkpoint settings leave room for the platform's target load: one run verifies and
signs at most CHECKPOINT_MAX_ROWS past the last checkpoint, once per interval, so the
log may grow by no more than that per interval or the unsigned tail grows for good.
A check of the configuration only: whether one run verifies and signs that many rows
within its interval is the audit benchmark's to measure (bench/audit.py)."""

from __future__ import annotations

from activities.audit import CHECKPOINT_MAX_ROWS
from agora import config

TARGET_ORDERS_PER_S = 30  # DESIGN §9
EVENTS_PER_ORDER = 8  # an order's events reaching audit (bench/audit.py counts as many)


def test_the_checkpoint_cap_per_interval_exceeds_what_the_target_load_appends() -> None:
    interval_s = config.load({}).audit_checkpoint_interval_s
    signable_per_s = CHECKPOINT_MAX_ROWS / interval_s
    assert signable_per_s >= 2 * TARGET_ORDERS_PER_S * EVENTS_PER_ORDER, signable_per_s
