"""The local stack: `python -m stack up|down|status|urls|kill`.

Used by `make run` (profile dev), `make test` (profile test) and the fault tests.
Every step is idempotent: running `up` again starts only what is not running
and downloads nothing that is cached.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time

from agora import config
from agora.leave import run_and_leave
from stack.base import ComponentError, Context, exclusive, say
from stack.component import Component
from stack.elasticsearch import Elasticsearch
from stack.kafka import Kafka
from stack.otelcol import Jaeger, OtelCollector
from stack.platform import compile_code, platform_components
from stack.postgres import Postgres
from stack.prometheus import Prometheus
from stack.redis import Redis
from stack.temporal import Temporal

# apt-get waits this long for a lock another apt holds (a fresh VM's apt-daily).
APT_LOCK_WAIT = ("-o", "DPkg::Lock::Timeout=300")


def infrastructure() -> list[Component]:
    """In start order: telemetry first so every later process can export to it."""
    return [
        Jaeger(),
        OtelCollector(),
        Postgres(),
        Redis(),
        Kafka(),
        Elasticsearch(),
        Temporal(),
        Prometheus(),
    ]


def missing_packages(packages: set[str]) -> list[str]:
    """Those of `packages` dpkg does not hold installed (all of them without dpkg)."""
    if not packages or shutil.which("dpkg-query") is None:
        return sorted(packages)
    listed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\n", *sorted(packages)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    installed = {
        line.split()[0].split(":")[0]
        for line in listed.splitlines()
        if line.endswith(" ok installed")  # "install ok installed", "hold ok installed"
    }
    return sorted(packages - installed)


def install_debian_packages(components: list[Component], ctx: Context) -> None:
    # The packages themselves, not whether their component is installed: Elasticsearch
    # counts as not installed until its zip is fetched (after this step), and a normal
    # user with acl and unzip present was told to install them again and again.
    wanted = {pkg for c in components if not c.installed(ctx) for pkg in c.debian_packages}
    missing = missing_packages(wanted)
    if not missing:
        return
    if os.geteuid() != 0:
        raise ComponentError(
            "apt",
            f"missing Debian packages: {' '.join(missing)}",
            hint=f"sudo apt-get update && sudo apt-get install -y {' '.join(missing)}",
        )
    say("apt", f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        # A fresh VM's apt-daily may hold the lock for a while: wait for it, not fail.
        ["apt-get", *APT_LOCK_WAIT, "update", "-q"],
        ["apt-get", *APT_LOCK_WAIT, "install", "-y", "-q", "--no-install-recommends", *missing],
    ):
        if subprocess.run(argv, env=env).returncode != 0:
            raise ComponentError(
                "apt", f"`{' '.join(argv)}` failed", hint="read apt's output above"
            )


def select(components: list[Component], names: list[str]) -> list[Component]:
    if not names:
        return components
    known = {c.name: c for c in components}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown component(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def all_components(with_platform: bool) -> list[Component]:
    return infrastructure() + (platform_components() if with_platform else [])


def cmd_up(ctx: Context, args: argparse.Namespace) -> None:
    components = select(all_components(args.platform), args.names)
    for component in components:
        component.preflight(ctx)
    install_debian_packages(components, ctx)
    compile_code()  # for the platform's processes and for the tests' own
    timings = {}
    started = time.monotonic()
    for component in components:
        timings[component.name] = component.up(ctx)
    say("stack", f"{ctx.settings.profile} stack healthy in {time.monotonic() - started:.1f}s")
    if args.platform and any(c.name == "svc-identity" for c in components):
        # A local admin to try the admin routes with (docs: README, "First requests").
        admin = subprocess.run(
            [sys.executable, "-m", "workers.identity.admin", "ensure-demo-admin"], check=False
        )
        if admin.returncode != 0:
            # The platform runs; only the README's admin sign-in would not work.
            say(
                "demo-admin",
                f"WARNING: not set up (exit {admin.returncode}, output above); the admin"
                " password file names no account until `make run` succeeds at it",
            )
    (ctx.state / "last-up.txt").write_text(
        "".join(f"{name} {seconds:.2f}\n" for name, seconds in timings.items())
    )
    if not args.no_urls:
        print_urls(ctx, components)


def print_urls(ctx: Context, components: list[Component]) -> None:
    urls = {label: url for c in components for label, url in c.urls(ctx).items()}
    print(f"\nAgora ({ctx.settings.profile}) is up.")
    for label, url in urls.items():
        print(f"  {label:<16} {url}")
    print(f"  {'logs':<16} {ctx.logs}/")
    print("\nOpen:")
    for label in ("gateway", "temporal-ui", "jaeger", "prometheus"):
        if label in urls:
            print(f"  {label:<16} {urls[label]}")
    if ctx.settings.profile == "dev":
        print("\nStop with `make stop`; see what runs with `make status`.")
    else:
        profile = f"AGORA_PROFILE={ctx.settings.profile} .venv/bin/python -m stack"
        print(f"\nStop with `{profile} down`; see what runs with `{profile} status`.")


def cmd_down(ctx: Context, args: argparse.Namespace) -> None:
    # Platform first (it depends on the rest), then infrastructure in reverse start order.
    for component in reversed(select(all_components(True), args.names)):
        if component.down(ctx):
            say(component.name, "stopped")


def cmd_status(ctx: Context, args: argparse.Namespace) -> None:
    print(f"Agora stack, profile {ctx.settings.profile}, state {ctx.state}")
    for component in all_components(True):
        pid = ctx.running_pid(component.name)
        if pid is None:
            state = "stopped"
        else:
            try:
                state = "healthy" if component.healthy(ctx) else "unhealthy"
            except Exception:
                state = "unhealthy"
        urls = "  ".join(component.urls(ctx).values())
        print(f"  {component.name:<16} {state:<10} pid {pid or '-':<8} {urls}")


def cmd_urls(ctx: Context, args: argparse.Namespace) -> None:
    print_urls(ctx, [c for c in all_components(True) if ctx.running_pid(c.name) is not None])


def cmd_kill(ctx: Context, args: argparse.Namespace) -> None:
    for component in select(all_components(True), args.names):
        ctx.kill(component.name)
        say(component.name, "killed (SIGKILL)")


def main(argv: list[str] | None = None) -> int:
    # Health probes retry while a component starts; its client libraries need not shout.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install and start components, wait until healthy")
    up.add_argument("--platform", action="store_true", help="also start services and gateway")
    up.add_argument("--no-urls", action="store_true", help="do not print the URLs at the end")
    up.add_argument("names", nargs="*")
    down = sub.add_parser("down", help="stop components (all by default)")
    down.add_argument("names", nargs="*")
    sub.add_parser("status", help="each component, its state and URL")
    sub.add_parser("urls", help="print the URLs of everything that runs")
    kill = sub.add_parser("kill", help="SIGKILL components, as a crash would")
    kill.add_argument("names", nargs="+")
    args = parser.parse_args(argv)

    ctx = Context(config.load())
    handlers = {
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "kill": cmd_kill,
        "urls": cmd_urls,
    }
    try:
        with exclusive(ctx) if args.command in ("up", "down", "kill") else contextlib.nullcontext():
            handlers[args.command](ctx, args)
    except ComponentError as error:
        print(f"\nFAILED {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    run_and_leave(main)
