"""`python -m bench [scenario...]` (all scenarios when none is named); `make bench` runs it.
`python -m bench load [flags]` is the stepped load run (bench.load, `make load`), run only
when asked for.

Writes reports/bench-<UTC timestamp>.md (tables) and .json (the same numbers).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import uvloop

from agora import config
from agora.config import Settings
from agora.leave import run_and_leave
from agora.logs import setup_logging
from bench import auth, catalog, orders, reports, tracing
from bench.stats import Row

Scenario = Callable[[Settings], Coroutine[Any, Any, dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {
    "auth": auth.run,
    "catalog": catalog.run,
    "orders": orders.run,
    "tracing": tracing.run,
}


def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Benchmark {meta['started']}", ""]
    lines.append(
        f"Profile `{meta['profile']}`, {meta['cpus']} CPUs, Python {meta['python']},"
        f" {meta['machine']}. Times in milliseconds."
    )
    for name, result in results.items():
        lines += ["", f"## `{name}`: {result['title']}", ""]
        lines.append("| measurement | n | p50 | p95 | p99 | mean |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for r in result["rows"]:
            lines.append(
                f"| {r.name} | {r.n} | {r.p50_ms:.3f} | {r.p95_ms:.3f} | {r.p99_ms:.3f}"
                f" | {r.mean_ms:.3f} |"
            )
        # Free-form lines a scenario adds under its table (e.g. CPU per component).
        notes = result.get("notes", [])
        if notes:
            lines.append("")
            lines += notes
        for target in result.get("targets", []):
            verdict = "met" if target["met"] else "NOT met"
            lines.append("")
            # Latencies are "at most" in ms; a target may say otherwise (throughput).
            compare, unit = target.get("compare", "<="), target.get("unit", "ms")
            lines.append(
                f"Target {target['name']} {compare} {target['target_ms']} {unit}:"
                f" measured {target['measured_ms']:.3f} {unit}, **{verdict}**."
            )
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Row):
        return value.as_dict()
    raise TypeError(type(value))


def run_scenarios(names: list[str], settings: Settings) -> dict[str, dict[str, Any]]:
    """Each named scenario in turn, with a line on stderr before and after each: a run
    takes minutes and the report comes only at the end."""
    results: dict[str, dict[str, Any]] = {}
    for number, name in enumerate(names, 1):
        print(f"bench: [{number}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        results[name] = uvloop.run(SCENARIOS[name](settings))
        elapsed = time.monotonic() - started
        print(
            f"bench: [{number}/{len(names)}] {name} done in {elapsed:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return results


def _infrastructure_down(settings: config.Settings) -> list[str]:
    """The stores and servers the scenarios need that do not accept connections."""
    down = []
    for name in ("postgres", "redis", "kafka", "elasticsearch", "temporal"):
        try:
            socket.create_connection((settings.host, settings.ports[name]), timeout=1).close()
        except OSError:
            down.append(name)
    return down


def main(argv: list[str] | None = None) -> int:
    settings = config.load(service="bench")
    # Library warnings (the SDK's, aiohttp's) as JSON lines like every service's.
    setup_logging("bench", settings.log_level)
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["load"]:
        # The load run has its own flags and report and is never part of the default set.
        from bench import load

        return load.main(args_in[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], metavar="scenario")
    args = parser.parse_args(argv)
    names = args.scenarios or list(SCENARIOS)
    down = _infrastructure_down(settings) if names else []
    if down:
        # The scenarios start their own gateway and services, not the stores under them.
        raise SystemExit(f"{', '.join(down)} not running: start the platform first (make run)")
    started = datetime.now(UTC)
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "profile": settings.profile,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.platform(),
    }
    results = run_scenarios(names, settings)
    text = markdown(results, meta)
    stem = reports.write(
        "bench", started, text, {"meta": meta, "results": results}, default=_jsonable
    )
    print(text)
    print(f"written: {stem}.md and {stem}.json")
    missed = [t["name"] for r in results.values() for t in r.get("targets", []) if not t["met"]]
    if missed:
        # The exit status says whether every target was met (a gate for a pipeline);
        # say so, or make's "Error 1" reads as a crash.
        print(f"bench: exit 1, targets not met: {'; '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    run_and_leave(main)
