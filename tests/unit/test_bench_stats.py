"""The bench's nearest-rank percentile."""

from __future__ import annotations

import math

import pytest

from bench.stats import percentile


@pytest.mark.parametrize(
    ("n", "fraction", "rank"),
    [
        (100, 0.95, 95),  # the 95th of 100, not the 96th
        (100, 0.99, 99),  # not the maximum
        (20, 0.95, 19),
        (500, 0.95, 475),
        (2, 0.50, 1),
        (6, 0.50, 3),
        (1, 0.99, 1),
        (3, 0.50, 2),
    ],
)
def test_the_nearest_rank_is_the_smallest_value_with_that_share_at_or_below_it(
    n: int, fraction: float, rank: int
) -> None:
    values = [float(v) for v in range(1, n + 1)]  # value == its 1-based rank
    assert percentile(values, fraction) == rank


def test_every_rank_agrees_with_the_definition() -> None:
    for n in range(1, 400):
        values = [float(v) for v in range(1, n + 1)]
        for fraction in (0.5, 0.95, 0.99):
            chosen = percentile(values, fraction)
            assert sum(v <= chosen for v in values) >= fraction * n - 1e-9
            assert sum(v < chosen for v in values) < fraction * n - 1e-9 or chosen == 1
            assert chosen == math.ceil(round(fraction * n, 9))


def test_no_values_give_nan() -> None:
    assert math.isnan(percentile([], 0.95))
