"""`make logs TRACE=…` gathers one trace's lines from every process's log, in time order."""

from __future__ import annotations

import json
from pathlib import Path

from agora.logview import trace_lines


def write(path: Path, *records: dict) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json at all\n")


def test_lines_of_one_trace_are_merged_across_files_in_time_order(tmp_path: Path) -> None:
    write(
        tmp_path / "gateway.log",
        {
            "timestamp": "2026-01-01T00:00:00.100Z",
            "service": "gateway",
            "trace_id": "t1",
            "message": "request",
        },
        {
            "timestamp": "2026-01-01T00:00:00.400Z",
            "service": "gateway",
            "trace_id": "t2",
            "message": "other trace",
        },
    )
    write(
        tmp_path / "svc-orders.log",
        {
            "timestamp": "2026-01-01T00:00:00.050Z",
            "service": "orders",
            "trace_id": "t0",
            "message": "earlier, other trace",
        },
        {
            "timestamp": "2026-01-01T00:00:00.200Z",
            "service": "orders",
            "trace_id": "t1",
            "message": "saga step",
        },
    )
    lines = trace_lines(tmp_path, "t1")
    assert [(r["service"], r["message"]) for r in lines] == [
        ("gateway", "request"),
        ("orders", "saga step"),
    ]


def test_a_logs_rotated_part_is_read_too(tmp_path: Path) -> None:
    # A process restarted after a load run rotates its log past 50 MiB: that run's
    # traces were "not found".
    line = {"timestamp": "2026-01-01T00:00:00Z", "service": "gateway", "trace_id": "t1"}
    write(tmp_path / "gateway.log.1", line)
    write(tmp_path / "gateway.log", {**line, "timestamp": "2026-01-01T00:00:01Z"})
    write(tmp_path / "gateway.log.2", {**line, "message": "not a part the stack writes"})
    found = trace_lines(tmp_path, "t1")
    assert [r["timestamp"] for r in found] == ["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"]
