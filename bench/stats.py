"""Percentiles and the report's row format."""

from __future__ import annotations

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
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
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
