"""The chaos run's numbers per fault window, and its report (reports/chaos-<UTC>.md and .json)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import reports
from bench.chaos_load import Request
from bench.invariants import Verdict
from bench.stats import row

KINDS = ("order", "price", "read", "search")


@dataclass
class FaultRecord:
    """When a fault happened and when its component and the clients were back (wall clock)."""

    name: str
    killed_at: float
    back_at: float = 0.0  # the component answered its health check again
    recovered: dict[str, float] = field(default_factory=dict)  # kind -> first OK attempt after
    restore_error: str = ""

    @property
    def window_end(self) -> float:
        """The fault's window: from the kill until every kind of request succeeds again."""
        return max([self.back_at, *self.recovered.values()])


@dataclass(frozen=True)
class WindowStats:
    requests: int
    client_errors: int  # failed after the client's retries
    attempts: int
    failed_attempts: int  # raw: every attempt that got an error or no answer
    order_ms: tuple[float, float, float]  # p50, p95, p99 of accepted orders (retries included)
    read_ms: tuple[float, float, float]  # the same for product reads and searches
    errors: dict[str, int]  # raw attempt errors by kind of answer

    @property
    def client_error_rate(self) -> float:
        return self.client_errors / self.requests if self.requests else 0.0

    @property
    def raw_error_rate(self) -> float:
        return self.failed_attempts / self.attempts if self.attempts else 0.0


def _percentiles(requests: list[Request]) -> tuple[float, float, float]:
    if not requests:
        return (math.nan, math.nan, math.nan)
    r = row("", [x.latency_s for x in requests])
    return (r.p50_ms, r.p95_ms, r.p99_ms)


def window(requests: list[Request], start: float, end: float) -> WindowStats:
    """Requests that started in [start, end) and every attempt made in it."""
    started = [r for r in requests if start <= r.started < end]
    attempts = [a for r in requests for a in r.attempts if start <= a.started < end]
    failed = [a for a in attempts if not a.ok]
    return WindowStats(
        requests=len(started),
        client_errors=sum(1 for r in started if not r.ok),
        attempts=len(attempts),
        failed_attempts=len(failed),
        order_ms=_percentiles([r for r in started if r.kind == "order" and r.ok]),
        read_ms=_percentiles([r for r in started if r.kind in ("read", "search") and r.ok]),
        errors=dict(Counter(a.error for a in failed).most_common(6)),
    )


def recovery(requests: list[Request], after: float) -> dict[str, float]:
    """Per kind, the end of the first successful attempt that started after `after`."""
    firsts: dict[str, float] = {}
    for r in requests:
        for a in r.attempts:
            if a.ok and a.started >= after and a.ended < firsts.get(r.kind, math.inf):
                firsts[r.kind] = a.ended
    return firsts


@dataclass
class ChaosResult:
    started: datetime
    meta: dict[str, Any]
    baseline: WindowStats
    faults: list[tuple[FaultRecord, WindowStats]]
    totals: dict[str, Any]
    verdicts: list[Verdict]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        """Why the run fails: an invariant, a component not restored, and the clients:
        orders placed again after every fault, none failed after its retries (the
        stores stayed consistent in a run where no order succeeded, which passed)."""
        failed = [f"invariant {v.name}" for v in self.verdicts if not v.ok]
        failed += [f"{f.name} not restored" for f, _ in self.faults if f.restore_error]
        failed += [
            f"no order succeeded after {f.name}"
            for f, _ in self.faults
            if not f.recovered.get("order")
        ]
        lost = self.totals["by_kind"].get("order", {}).get("failed", 0)
        if lost:
            failed.append(f"{lost} order requests failed after the client's retries")
        return failed


def _ms(values: tuple[float, float, float]) -> str:
    return " / ".join("-" if math.isnan(v) else f"{v:.0f}" for v in values)


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def fault_table(result: ChaosResult) -> list[str]:
    lines = [
        "| fault | back (s) | first order OK (s) | requests | raw error rate | client error rate"
        " | order ms p50 / p95 / p99 | read ms p50 / p95 / p99 |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    b = result.baseline
    lines.append(
        f"| (steady load before the first fault) | | | {b.requests} | {_pct(b.raw_error_rate)}"
        f" | {_pct(b.client_error_rate)} | {_ms(b.order_ms)} | {_ms(b.read_ms)} |"
    )
    for record, stats in result.faults:
        back = f"{record.back_at - record.killed_at:.1f}" if record.back_at else "never"
        order = record.recovered.get("order")
        first = f"{order - record.killed_at:.1f}" if order else "none"
        name = record.name + (
            f" (restore failed: {record.restore_error})" if record.restore_error else ""
        )
        lines.append(
            f"| {name} | {back} | {first} | {stats.requests} | {_pct(stats.raw_error_rate)}"
            f" | {_pct(stats.client_error_rate)} | {_ms(stats.order_ms)} | {_ms(stats.read_ms)} |"
        )
    seen = [(record.name, stats.errors) for record, stats in result.faults if stats.errors]
    if seen:
        lines += ["", "Raw errors seen by the clients in each window (answer: attempts):", ""]
        lines += [
            f"* {name}: " + ", ".join(f"`{error}`: {n}" for error, n in errors.items())
            for name, errors in seen
        ]
    return lines


def invariant_table(verdicts: list[Verdict]) -> list[str]:
    lines = ["| invariant | result | detail | held after (s) |", "|---|---|---|---:|"]
    for v in verdicts:
        lines.append(f"| {v.name} | {'ok' if v.ok else '**FAILED**'} | {v.detail} | {v.seconds} |")
    return lines


def markdown(result: ChaosResult) -> str:
    meta = result.meta
    lines = [
        f"# Chaos run {meta['started']}",
        "",
        f"Profile `{meta['profile']}`, {meta['cpus']} CPUs. Load through the gateway: "
        f"{meta['mix']}. Each fault: SIGKILL, {meta['down_s']} s down, `up` again, then"
        f" {meta['quiet_s']} s of quiet load. Verdict: **{'PASS' if result.ok else 'FAIL'}**"
        + (f" ({'; '.join(result.failures)})." if result.failures else "."),
        "",
        "## Faults",
        "",
        "Times are seconds after the kill: *back* when the component answered its health"
        " check again, *first order OK* when an order attempt started after that succeeded."
        " The window of a fault runs from its kill until every kind of request succeeded"
        " again; *raw error rate* counts every attempt made in it, *client error rate* the"
        " requests started in it that still failed after the client's retries (same"
        " Idempotency-Key, backoff, a bounded budget); latencies are of the requests that"
        " succeeded, retries included.",
        "",
        *fault_table(result),
        "",
        "## Invariants (from the databases, after a drain)",
        "",
        *invariant_table(result.verdicts),
    ]
    problems = [(v.name, p) for v in result.verdicts for p in v.problems]
    if problems:
        lines += ["", "Problems found (first 20 per invariant):", ""]
        lines += [f"* {name}: {p}" for name, p in problems]
    lines += ["", "## Requests", "", "| kind | requests | succeeded | failed after retries |"]
    lines.append("|---|---:|---:|---:|")
    for kind, counts in result.totals["by_kind"].items():
        lines.append(f"| {kind} | {counts['requests']} | {counts['ok']} | {counts['failed']} |")
    failures = result.totals["final_errors"]
    if failures:
        lines += [
            "",
            "Last answers of the requests that failed after retries: "
            + ", ".join(f"`{k}`: {n}" for k, n in failures.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def totals(requests: list[Request]) -> dict[str, Any]:
    by_kind = {
        kind: {
            "requests": sum(1 for r in requests if r.kind == kind),
            "ok": sum(1 for r in requests if r.kind == kind and r.ok),
            "failed": sum(1 for r in requests if r.kind == kind and not r.ok),
        }
        for kind in KINDS
    }
    final = Counter(
        f"{r.kind}: {r.attempts[-1].error if r.attempts else 'not sent'}"
        for r in requests
        if not r.ok
    )
    return {"by_kind": by_kind, "final_errors": dict(final.most_common(10))}


def _finite(value: Any) -> Any:
    """JSON has no NaN: a percentile of no requests is null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write(result: ChaosResult, folder: Path | None = None) -> Path:
    document = {
        "meta": result.meta,
        "ok": result.ok,
        "baseline": asdict(result.baseline),
        "faults": [
            {**asdict(record), "window_s": record.window_end - record.killed_at, **asdict(stats)}
            for record, stats in result.faults
        ],
        "invariants": [asdict(v) for v in result.verdicts],
        "totals": result.totals,
    }
    return reports.write(
        "chaos", result.started, markdown(result), _finite(document), default=str, folder=folder
    )
