"""Percentiles and the report's row format."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Row:
    name: str
    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    # The smallest value with at least `fraction` of them at or below it: rank
    # ceil(fraction * n), 1-based (rounded first, so 0.95 * 100 is 95, not 95.000001).
    n = len(sorted_values)
    rank = max(0, min(n - 1, math.ceil(round(fraction * n, 9)) - 1))
    return sorted_values[rank]


def row(name: str, seconds: list[float], note: str = "") -> Row:
    values = sorted(seconds)
    return Row(
        name=name,
        n=len(values),
        p50_ms=percentile(values, 0.50) * 1000,
        p95_ms=percentile(values, 0.95) * 1000,
        p99_ms=percentile(values, 0.99) * 1000,
        mean_ms=statistics.fmean(values) * 1000 if values else float("nan"),
        note=note,
    )
