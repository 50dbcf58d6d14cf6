"""The load run's Markdown report: steps, per-kind latencies, and where the time goes."""

from __future__ import annotations

from typing import Any

from bench.load_cpu import GENERATOR
from bench.load_plan import MACHINE, OTHERS, StepSummary, bottleneck
from bench.stats import Row


def _ms(r: Row) -> str:
    return f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f}"


def _errors(step: StepSummary) -> str:
    return ", ".join(f"{k}: {v}" for k, v in step.errors.items()) or "-"


def _where(title: str, step: StepSummary, cores: int) -> list[str]:
    lines = ["", f"## {title}: {step.offered_rate:.1f} req/s offered", ""]
    lines.append(
        "Server-Timing stages per request kind (the gateway's own view; `total` is the"
        " gateway's whole handling, end to end adds the network and the client's queue)."
        " p50 | p95 | p99 in ms."
    )
    lines += ["", "| kind | end to end | auth | ratelimit | upstream | total |"]
    lines.append("|---|---|---|---|---|---|")
    for kind, latency in step.by_kind.items():
        stages = step.stages.get(kind, {})
        cells = [
            _ms(stages[s]).replace(" | ", " / ") if s in stages else "-"
            for s in ("auth", "ratelimit", "upstream", "total")
        ]
        lines.append(f"| {kind} | {_ms(latency).replace(' | ', ' / ')} | {' | '.join(cells)} |")
    if step.by_kind:
        slowest = max(step.by_kind.values(), key=lambda r: r.p99_ms)
        upstream = step.stages.get(slowest.name, {}).get("upstream")
        lines += [
            "",
            f"Slowest kind: {slowest.name}, p99 {slowest.p99_ms:.1f} ms"
            + (f", of which upstream p99 {upstream.p99_ms:.1f} ms." if upstream else "."),
        ]
    lines += ["", "CPU over the measured window:", ""]
    lines.append("| process | CPU s | cores |")
    lines.append("|---|---:|---:|")
    for name, seconds in step.cpu_s.items():
        label = f"{name} (this process)" if name == GENERATOR else name
        lines.append(f"| {label} | {seconds:.1f} | {seconds / step.window_s:.2f} |")
    lines += ["", f"Bottleneck: {bottleneck(step.cpu_s, step.window_s, cores)}."]
    return lines


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    options = result["options"]
    steps: list[StepSummary] = result["steps"]
    knee: StepSummary | None = result["knee"]
    failed: StepSummary | None = result["failed"]
    limit = options["p99_ms"]
    mix = ", ".join(f"{weight} {kind}" for kind, weight in result["mix"].items())
    lines = [f"# Load run {meta['started']}", ""]
    lines.append(
        f"Profile `{meta['profile']}`, {meta['cpus']} CPUs, Python {meta['python']},"
        f" {meta['machine']}; gateway {meta['gateway']} (tracing"
        f" {'on' if meta['tracing'] else 'off'}, sample ratio {meta['trace_sample_ratio']})."
    )
    lines.append(
        f"Open model, constant arrivals; mix per {sum(result['mix'].values())} requests: {mix};"
        f" {options['customers']} customers, orders over {options['order_skus']} skus."
        f" Steps from {options['start_rate']:g} req/s x{options['factor']:g}, each"
        f" {options['warmup_s']:g} s warm-up + {options['step_s']:g} s measured;"
        f" latency counted from when each request was due. Times in ms."
    )
    lines.append("")
    if knee is None:
        lines.append(f"**No step held p99 <= {limit:g} ms without errors.**")
    else:
        lines.append(
            f"**Highest rate held (p99 <= {limit:g} ms, no errors):"
            f" {knee.offered_rate:.1f} req/s offered, {knee.achieved_rate:.1f} achieved,"
            f" p99 {knee.overall.p99_ms:.1f} ms.**"
        )
    lines += ["", "## Steps", ""]
    lines.append(
        "| offered req/s | achieved req/s | n | p50 | p95 | p99 | send lag p99 | errors | held |"
    )
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for step in steps:
        lines.append(
            f"| {step.offered_rate:.1f} | {step.achieved_rate:.1f} | {step.overall.n}"
            f" | {_ms(step.overall)} | {step.send_lag.p99_ms:.1f} | {_errors(step)}"
            f" | {'yes' if step.held(limit) else 'NO'} |"
        )
    lines += ["", "## Per request kind", ""]
    lines.append("| offered req/s | kind | n | p50 | p95 | p99 |")
    lines.append("|---:|---|---:|---:|---:|---:|")
    for step in steps:
        for kind, latency in step.by_kind.items():
            lines.append(f"| {step.offered_rate:.1f} | {kind} | {latency.n} | {_ms(latency)} |")
    cores = int(meta["cpus"])
    if knee is not None:
        lines += _where("Where the time goes at the knee", knee, cores)
    if failed is not None:
        lines += _where("At the first step not held", failed, cores)
    lines += [
        "",
        f"`{MACHINE}` is all CPU the machine ran in the window, `{OTHERS}` the part"
        " outside the stack's processes and this generator.",
    ]
    return "\n".join(lines) + "\n"
