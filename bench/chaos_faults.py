"""Faults the chaos run injects, and how each one is brought back.

A fault is two blocking callables: `kill` (SIGKILL, as a crash would) and
`restore` (start it again and return once it answers its health check). Both
block, so the run calls them in a thread while the load goes on.

`stack_fault` builds one on the local stack's own component of that name: the
pid recorded by `python -m stack` is killed (`Context.kill`, the whole process
group) and `python -m stack up <name>` restarts it, exactly what an operator
would run after a crash. The platform's processes are not
supervised by a daemon (see stack/base.py), so the restart is this explicit step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from stack.__main__ import all_components
from stack.base import Context
from stack.component import Component


@dataclass(frozen=True)
class Fault:
    name: str  # what the report calls it
    kill: Callable[[], None]
    restore: Callable[[], None]


def component(name: str) -> Component:
    for candidate in all_components(with_platform=True):
        if candidate.name == name:
            return candidate
    raise KeyError(f"no stack component {name!r}")


def stack_fault(ctx: Context, name: str, what: str = "") -> Fault:
    """SIGKILL of the stack component `name`, then `python -m stack up` for it."""
    component(name)  # fail now, not mid-run, on a name the stack does not know
    return Fault(
        name=what or f"SIGKILL {name}",
        kill=lambda: ctx.kill(name),
        restore=lambda: stack_up(name),
    )


def stack_up(*names: str, show: bool = False) -> None:
    """`python -m stack up --platform <names>` in a process of its own.

    Not `Component.up` in this process: what it starts would be our children,
    and a killed child stays a zombie until we reap it, which `Context.kill`
    waits out (10 s) and which PostgreSQL mistakes for a live postmaster. The
    short-lived `stack` process leaves them to init, as `make run` does.
    """
    result = subprocess.run(
        [sys.executable, "-m", "stack", "up", "--platform", "--no-urls", *names],
        env=os.environ.copy(),
        capture_output=not show,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        tail = (result.stderr or "").strip()[-500:]
        raise RuntimeError(f"stack up {' '.join(names)} failed (exit {result.returncode}) {tail}")


# The make chaos sequence: each platform worker the saga needs, the gateway, then
# every store and Temporal. PostgreSQL is a kill -9 too: its restart is crash
# recovery from the WAL, the harder of the two kinds of restart.
FULL_SEQUENCE: tuple[tuple[str, str], ...] = (
    ("svc-orders", "SIGKILL orders worker"),
    ("svc-payments", "SIGKILL payments worker"),
    ("svc-inventory", "SIGKILL inventory worker"),
    ("gateway", "SIGKILL gateway"),
    ("kafka", "SIGKILL Kafka broker"),
    ("elasticsearch", "SIGKILL Elasticsearch"),
    ("redis", "SIGKILL Redis"),
    ("temporal", "SIGKILL Temporal dev server"),
    ("postgres", "PostgreSQL restart (kill -9, crash recovery)"),
)


def full_sequence(ctx: Context, only: list[str] | None = None) -> list[Fault]:
    return [
        stack_fault(ctx, name, what) for name, what in FULL_SEQUENCE if not only or name in only
    ]
