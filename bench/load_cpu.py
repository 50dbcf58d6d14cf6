"""CPU seconds per process of the stack over a window, read with psutil.

Each component is the process the stack recorded in its pid file plus all its
descendants (PostgreSQL's backends, Elasticsearch's JVM under its launcher), and
the CPU of descendants that already exited and were reaped (children_user /
children_system), so short-lived backends are not lost.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psutil

from agora.config import Settings
from bench.load_plan import MACHINE, OTHERS
from stack.base import Context

GENERATOR = "load generator"


def _tree_cpu(pid: int, *, descendants: bool = True) -> float:
    try:
        root = psutil.Process(pid)
        members = [root, *(root.children(recursive=True) if descendants else [])]
    except psutil.Error:
        return 0.0
    total = 0.0
    for member in members:
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue  # exited between the listing and the read
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _started_here() -> dict[str, int]:
    """Services and the gateway a bench scenario started itself (bench.processes)."""
    found = {}
    for child in psutil.Process().children():
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        if argv[1:3] == ["-m", "workers"] and len(argv) > 3:
            found[f"svc-{argv[3]}"] = child.pid
        elif argv[1:3] == ["-m", "gateway"]:
            found["gateway"] = child.pid
    return found


def _machine_busy() -> float:
    """CPU seconds all processes of the machine ran (guest time is already in user)."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


class CpuMeter:
    """Snapshots of CPU seconds per component; the difference of two is a window's use."""

    def __init__(self, settings: Settings) -> None:
        self._ctx = Context(settings)

    def pids(self) -> dict[str, int]:
        found = {GENERATOR: os.getpid()}
        for record in sorted(self._ctx.pids.glob("*.json")):
            pid = self._ctx.running_pid(record.stem)
            if pid is not None:
                found[record.stem] = pid
        found.update(_started_here())
        return found

    def snapshot(self) -> dict[str, float]:
        # The generator alone: services a scenario started are its children, counted apart.
        shot = {
            name: _tree_cpu(pid, descendants=name != GENERATOR) for name, pid in self.pids().items()
        }
        shot[MACHINE] = _machine_busy()
        return shot


def window(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds per component between two snapshots, busiest first, with what the
    rest of the machine (other stacks, other users) used in the same window."""
    used = {
        name: max(0.0, after[name] - before[name])
        for name in after
        if name in before and name != MACHINE
    }
    ordered = dict(sorted(used.items(), key=lambda kv: kv[1], reverse=True))
    if MACHINE in before and MACHINE in after:
        busy = max(0.0, after[MACHINE] - before[MACHINE])
        ordered[MACHINE] = busy
        ordered[OTHERS] = max(0.0, busy - sum(used.values()))
    return ordered
