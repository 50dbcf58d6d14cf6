"""The shape of one local component and the generic way to bring it up."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from stack.base import (
    ComponentError,
    Context,
    process_age_s,
    require_free_ports,
    say,
    wait_until,
)


class Component:
    """One process of the local stack. Subclasses fill in the hooks."""

    name: str = ""
    ports: tuple[str, ...] = ()
    debian_packages: tuple[str, ...] = ()
    start_timeout: float = 60.0

    def preflight(self, ctx: Context) -> None:
        """Fail now (ComponentError with a hint) if a tool that `install` or `start` will
        need is missing: `stack up` asks every component before installing any, so a
        missing JDK is reported in seconds, not after minutes of other builds."""

    def installed(self, ctx: Context) -> bool:
        """True when everything `start` needs is on disk (no download needed)."""
        return True

    def install(self, ctx: Context) -> None:
        """Fetch or build what `start` needs; idempotent and cached under ctx.cache."""

    def prepare(self, ctx: Context) -> None:
        """First-start initialisation of the state folder (initdb, format, config files)."""

    def start(self, ctx: Context) -> None:
        raise NotImplementedError

    def healthy(self, ctx: Context) -> bool:
        raise NotImplementedError

    def after_healthy(self, ctx: Context) -> None:
        """Idempotent set-up that needs the component up (roles, topics, attributes)."""

    def urls(self, ctx: Context) -> dict[str, str]:
        return {}

    def stale(self, ctx: Context) -> bool:
        """True when the running process no longer matches what would be started now."""
        return False

    # -----------------------------------------------------------------

    def up(self, ctx: Context) -> float:
        """Install, start (unless already running and healthy), wait for health, set up."""
        started = time.monotonic()
        if not self.installed(ctx):
            say(self.name, "installing")
            self.install(ctx)
        if ctx.running_pid(self.name) is not None and self.stale(ctx):
            say(self.name, "code changed since it started: restarting it")
            self.down(ctx)  # the component's own stop (PostgreSQL's is a fast shutdown)
        if ctx.running_pid(self.name) is not None:
            if _safe(self.healthy, ctx):
                say(self.name, "already running")
                self.after_healthy(ctx)
                return 0.0
            # Running but not answering: it may be starting (an earlier `up` interrupted,
            # say), so wait out the rest of its start-up time, 15 s at least, else restart.
            try:
                wait_until(
                    self.name, lambda: self.healthy(ctx), timeout=self.patience(ctx), ctx=ctx
                )
                self.after_healthy(ctx)
                return time.monotonic() - started
            except ComponentError:
                say(self.name, "running but not healthy: restarting it")
                self.down(ctx)
        require_free_ports(self.name, ctx, self.ports)
        self.prepare(ctx)
        self.start(ctx)
        wait_until(self.name, lambda: self.healthy(ctx), timeout=self.start_timeout, ctx=ctx)
        self.after_healthy(ctx)
        elapsed = time.monotonic() - started
        say(self.name, f"healthy in {elapsed:.1f}s")
        return elapsed

    def patience(self, ctx: Context) -> float:
        """How long to wait for a running, unhealthy process before restarting it: what is
        left of its start-up time (Elasticsearch 120 s), 15 s at least. A flat 15 s
        restarted an Elasticsearch or Kafka still starting."""
        pid = ctx.running_pid(self.name)
        age = process_age_s(pid) if pid is not None else None
        left = self.start_timeout - age if age is not None else 0.0
        return max(15.0, left)

    def down(self, ctx: Context) -> bool:
        return ctx.stop(self.name)


def _safe(check: object, ctx: Context) -> bool:
    try:
        return bool(check(ctx))  # type: ignore[operator]
    except Exception:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return 200 <= response.status < 300


def http_body(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def render_template(source: Path, target: Path, values: dict[str, object]) -> None:
    from string import Template

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        Template(source.read_text()).substitute({k: str(v) for k, v in values.items()})
    )
