"""The pure parts of the load run: the request mix, the rate steps, the arrival
schedule, the per-step summary and where the knee is.

Nothing here touches the network or the clock, so tests/unit/test_bench_load.py
can pin the behaviour down exactly.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from bench.stats import Row, row

# Per 24 requests: 20 browse (reads, category listings, searches) for 2 orders placed and
# 2 orders read back: browsing about ten times as often as ordering.
DEFAULT_MIX: dict[str, int] = {
    "product": 10,
    "listing": 4,
    "search": 6,
    "order_place": 2,
    "order_read": 2,
}
# The Server-Timing stages the gateway reports, in the order a request passes them.
STAGES = ("auth", "ratelimit", "signature", "upstream", "total")
_STAGE = re.compile(r"([\w-]+);dur=([\d.]+)")
# Pseudo-processes of a CPU window: all the machine ran, and the part outside the stack.
MACHINE = "(machine busy)"
OTHERS = "(other processes)"


def kinds(mix: Mapping[str, int], rng: random.Random) -> Iterator[str]:
    """Request kinds forever: each cycle holds every kind exactly its weight times,
    shuffled, so any window of a few cycles has the mix's proportions (a weighted
    random draw would drift at the low rates of the first steps)."""
    deck = [kind for kind, weight in mix.items() for _ in range(weight)]
    if not deck:
        raise ValueError("the mix has no request kinds")
    while True:
        rng.shuffle(deck)
        yield from deck


def rate_steps(start: float, factor: float, max_rate: float, max_steps: int) -> list[float]:
    """Offered rates in req/s: start, start*factor, ... up to max_rate and max_steps."""
    if start <= 0 or factor <= 1 or max_steps < 1:
        raise ValueError("need start > 0, factor > 1 and at least one step")
    rates: list[float] = []
    rate = start
    while len(rates) < max_steps and rate <= max_rate * (1 + 1e-9):
        rates.append(rate)
        rate *= factor
    return rates


def arrival_offsets(rate: float, seconds: float) -> list[float]:
    """When each request of a constant-rate stream is due, in seconds from its start.

    An open model: requests are due at fixed times whatever the answers do, so a
    slow server meets a growing queue rather than a politely waiting client.
    """
    if rate <= 0 or seconds <= 0:
        return []
    count = math.floor(rate * seconds + 1e-9)
    return [i / rate for i in range(count)]


def parse_server_timing(header: str) -> dict[str, float]:
    """`auth;dur=0.134, upstream;dur=4.5` -> {"auth": 0.000134, "upstream": 0.0045} (seconds)."""
    return {stage: float(ms) / 1000 for stage, ms in _STAGE.findall(header)}


@dataclass(frozen=True)
class Sample:
    """One request: when it was due, how long until its answer counting from then
    (so time spent waiting in the generator is charged too, no coordinated omission),
    and how it ended."""

    kind: str
    due: float
    latency_s: float
    send_lag_s: float
    outcome: str  # the HTTP status ("200") or a client-side failure ("timeout", "connection")
    ok: bool
    stages: Mapping[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> float:
        return self.due + self.latency_s


@dataclass(frozen=True)
class StepSummary:
    offered_rate: float
    window_s: float
    achieved_rate: float
    overall: Row
    by_kind: dict[str, Row]
    errors: dict[str, int]  # "<kind> <outcome>" -> count
    send_lag: Row
    stages: dict[str, dict[str, Row]]  # kind -> stage -> Row
    cpu_s: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in the window

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def held(self, p99_limit_ms: float) -> bool:
        """The step is held when its p99 is within the limit and nothing failed."""
        return self.overall.n > 0 and self.error_count == 0 and self.overall.p99_ms <= p99_limit_ms


def summarize(
    offered_rate: float,
    window_start: float,
    window_s: float,
    samples: Sequence[Sample],
    cpu_s: Mapping[str, float] | None = None,
) -> StepSummary:
    """The step's numbers from the samples due inside its measured window.

    Achieved rate counts answers that arrived inside the window: when the system
    cannot keep up it falls below the offered rate even though every request was sent.
    """
    window_end = window_start + window_s
    measured = [s for s in samples if window_start <= s.due < window_end]
    answered = sum(1 for s in measured if window_start <= s.completed < window_end)
    by_kind_latency: dict[str, list[float]] = {}
    by_kind_stage: dict[str, dict[str, list[float]]] = {}
    errors: dict[str, int] = {}
    for sample in measured:
        by_kind_latency.setdefault(sample.kind, []).append(sample.latency_s)
        if not sample.ok:
            key = f"{sample.kind} {sample.outcome}"
            errors[key] = errors.get(key, 0) + 1
        stages = by_kind_stage.setdefault(sample.kind, {})
        for stage, seconds in sample.stages.items():
            stages.setdefault(stage, []).append(seconds)
    return StepSummary(
        offered_rate=offered_rate,
        window_s=window_s,
        achieved_rate=answered / window_s if window_s > 0 else 0.0,
        overall=row("all requests", [s.latency_s for s in measured]),
        by_kind={kind: row(kind, values) for kind, values in sorted(by_kind_latency.items())},
        errors=dict(sorted(errors.items())),
        send_lag=row("send lag (sent - due)", [s.send_lag_s for s in measured]),
        stages={
            kind: {stage: row(f"{kind} {stage}", stages[stage]) for stage in _ordered(stages)}
            for kind, stages in sorted(by_kind_stage.items())
        },
        cpu_s=dict(cpu_s or {}),
    )


def _ordered(stages: Mapping[str, object]) -> list[str]:
    known = [s for s in STAGES if s in stages]
    return known + sorted(s for s in stages if s not in STAGES)


def knee(steps: Sequence[StepSummary], p99_limit_ms: float) -> StepSummary | None:
    """The highest-rate step held before the first one that was not (None if the
    first step already failed): higher steps after a failure do not count, since
    a system that buckled once has not shown it holds the rates above."""
    best: StepSummary | None = None
    for step in steps:
        if not step.held(p99_limit_ms):
            break
        if best is None or step.offered_rate > best.offered_rate:
            best = step
    return best


def first_failed(steps: Sequence[StepSummary], p99_limit_ms: float) -> StepSummary | None:
    return next((s for s in steps if not s.held(p99_limit_ms)), None)


def zipf_weights(count: int, exponent: float = 1.0) -> list[float]:
    """Cumulative Zipf weights for `random.choices(cum_weights=...)`: a few products
    are read far more often than the long tail, as in a real shop (and as a cache sees it)."""
    total = 0.0
    cumulative = []
    for rank in range(1, count + 1):
        total += 1.0 / rank**exponent
        cumulative.append(total)
    return cumulative


def bottleneck(cpu_s: Mapping[str, float], window_s: float, cores: int) -> str:
    """One sentence naming the busiest process and how close the machine was to full."""
    named = {k: v for k, v in cpu_s.items() if k not in (MACHINE, OTHERS)}
    if not named or window_s <= 0:
        return "no CPU samples"
    top = sorted(named.items(), key=lambda kv: kv[1], reverse=True)[:3]
    busy = cpu_s.get(MACHINE, sum(named.values()))
    parts = ", ".join(f"{name} {seconds / window_s:.2f} cores" for name, seconds in top)
    text = (
        f"busiest: {parts}; the machine was {busy / window_s / cores:.0%} busy"
        f" ({busy / window_s:.2f} of {cores} cores)"
    )
    others = cpu_s.get(OTHERS, 0.0)
    if busy > 0 and others / busy > 0.25:
        # Then the numbers say more about the neighbours than about the platform.
        text += (
            f"; processes outside the stack took {others / window_s:.2f} cores:"
            " the run was not alone on the machine"
        )
    return text
