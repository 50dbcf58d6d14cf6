"""`make logs TRACE=<trace id>`: every log line of one trace, across all processes, in time order.

Reads the JSON log files of the local stack (`<state>/logs/*.log`, and each one's
rotated part `*.log.1`). Lines that
are not JSON (the output of third-party components) are skipped. Without a
trace id it prints the most recent trace ids seen, to pick one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from agora import config


def records(log_dir: Path) -> Iterator[dict[str, object]]:
    # With each log's rotated part (`<name>.log.1`, stack/base.py): a process restarted
    # after a load run keeps that run's lines there.
    for path in sorted([*log_dir.glob("*.log"), *log_dir.glob("*.log.1")]):
        with path.open(errors="replace") as handle:
            for line in handle:
                if not line.startswith("{"):
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "service" in record:
                    yield record


def trace_lines(log_dir: Path, trace_id: str) -> list[dict[str, object]]:
    found = [r for r in records(log_dir) if r.get("trace_id") == trace_id]
    return sorted(found, key=lambda r: str(r.get("timestamp", "")))


def render(record: dict[str, object]) -> str:
    known = {"timestamp", "service", "level", "message", "trace_id", "span_id", "logger"}
    extra = {k: v for k, v in record.items() if k not in known}
    tail = f" {json.dumps(extra, default=str)}" if extra else ""
    return (
        f"{record.get('timestamp', '')} {record.get('service', ''):<10} "
        f"{record.get('level', ''):<7} span={record.get('span_id', '')} "
        f"{record.get('message', '')}{tail}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make logs TRACE=<id>", description=__doc__)
    parser.add_argument("trace_id", nargs="?", default="")
    parser.add_argument("--dir", type=Path, help="log folder (default: the profile's)")
    args = parser.parse_args(argv)
    log_dir = args.dir or config.load().state_dir / "logs"
    if not args.trace_id:
        recent: dict[str, str] = {}
        for record in records(log_dir):
            trace_id = str(record.get("trace_id") or "")
            if trace_id:
                recent[trace_id] = str(record.get("timestamp", ""))
        for trace_id, when in sorted(recent.items(), key=lambda kv: kv[1])[-20:]:
            print(f"{when}  {trace_id}")
        print("\nusage: make logs TRACE=<trace id>", file=sys.stderr)
        return 0
    lines = trace_lines(log_dir, args.trace_id)
    for record in lines:
        print(render(record))
    if not lines:
        print(f"no log line carries trace id {args.trace_id} in {log_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
