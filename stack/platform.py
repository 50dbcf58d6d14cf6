"""Agora's own processes: one per service (`python -m workers <service>`) and the gateway."""

from __future__ import annotations

import compileall
import hashlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agora.config import REPO_ROOT, SERVICES
from stack.base import Context
from stack.component import Component, http_ok


def _profile_env(ctx: Context) -> dict[str, str]:
    """What a child process needs to resolve the same settings as this stack."""
    keys = ("AGORA_PROFILE", "AGORA_STATE_DIR", "AGORA_CACHE_DIR", "AGORA_PORT_OFFSET")
    env = {key: os.environ[key] for key in keys if key in os.environ}
    env["AGORA_PROFILE"] = ctx.settings.profile
    env["AGORA_STATE_DIR"] = str(ctx.settings.state_dir)
    return env


CODE_DIRS = ("agora", "workers", "workflows", "activities", "gateway", "contracts")
# What a service reads at start besides its Python: its migrations (activities/migrations).
CODE_PATTERNS = ("*.py", "*.sql")


def _code_files() -> list[Path]:
    files = [REPO_ROOT / "pyproject.toml"]  # the dependencies the processes import
    for folder in CODE_DIRS:
        for pattern in CODE_PATTERNS:
            files.extend(sorted((REPO_ROOT / folder).rglob(pattern)))
    return files


def code_fingerprint() -> str:
    """Changes whenever a file the platform runs changes (path, size or mtime)."""
    digest = hashlib.sha256()
    for path in _code_files():
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def compile_code() -> None:
    """Write the platform's bytecode (only what changed since the last time).

    The machine and the image run with PYTHONDONTWRITEBYTECODE=1, so Python never
    writes .pyc files itself (the image compiles at build time). Without them, each
    new workflow run re-imports its workflow module in the sandbox from source,
    compiling it every time: about a tenth of the orders worker's CPU under load.
    """
    for folder in CODE_DIRS:
        compileall.compile_dir(REPO_ROOT / folder, quiet=1)


class PlatformProcess(Component):
    """An Agora process: restarted by `up` when the code changed since it started."""

    def spawn_platform(self, ctx: Context, argv: list[str], env: dict[str, str]) -> None:
        ctx.spawn(self.name, argv, env=env)
        (ctx.pids / f"{self.name}.code").write_text(code_fingerprint())

    def adopt(self, ctx: Context, pid: int, argv: Sequence[object]) -> None:
        """Record a process started elsewhere (by the integration tests) as this one."""
        ctx.record(self.name, pid, argv)
        (ctx.pids / f"{self.name}.code").write_text(code_fingerprint())

    def stale(self, ctx: Context) -> bool:
        try:
            started_with = (ctx.pids / f"{self.name}.code").read_text()
        except FileNotFoundError:
            return True
        return started_with != code_fingerprint()


class ServiceProcess(PlatformProcess):
    """`python -m workers <service>`: worker + gRPC server + consumers + relay + side port."""

    start_timeout = 60

    def __init__(self, service: str):
        self.service = service
        self.name = f"svc-{service}"
        self.ports = (f"{service}_grpc", f"{service}_side")

    def start(self, ctx: Context) -> None:
        self.spawn_platform(
            ctx,
            [sys.executable, "-m", "workers", self.service],
            {**_profile_env(ctx), "AGORA_SERVICE": self.service},
        )

    def healthy(self, ctx: Context) -> bool:
        return http_ok(f"http://{ctx.settings.host}:{ctx.settings.side_port(self.service)}/readyz")

    def urls(self, ctx: Context) -> dict[str, str]:
        host = ctx.settings.host
        return {
            self.name: f"grpcs://{host}:{ctx.settings.grpc_port(self.service)} "
            f"(metrics http://{host}:{ctx.settings.side_port(self.service)}/metrics)"
        }


class GatewayProcess(PlatformProcess):
    name = "gateway"
    ports = ("gateway", "gateway_side")
    start_timeout = 60

    def start(self, ctx: Context) -> None:
        self.spawn_platform(
            ctx,
            [sys.executable, "-m", "gateway"],
            {**_profile_env(ctx), "AGORA_SERVICE": "gateway"},
        )

    def healthy(self, ctx: Context) -> bool:
        # Ready, not only alive: a gateway without the signing keys (JWKS) refuses
        # every token, so `make run` would print its URLs too early and keep a
        # gateway that never got them.
        return http_ok(f"http://{ctx.settings.host}:{ctx.port('gateway_side')}/readyz")

    def urls(self, ctx: Context) -> dict[str, str]:
        return {"gateway": f"http://{ctx.settings.host}:{ctx.port('gateway')}"}


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package itself is missing
        return False


def implemented_services() -> list[str]:
    """Services whose worker wiring exists (workers/<service>/)."""
    return [s for s in SERVICES if _exists(f"workers.{s}")]


def platform_components() -> list[Component]:
    components: list[Component] = [ServiceProcess(s) for s in implemented_services()]
    if _exists("gateway.__main__"):
        components.append(GatewayProcess())
    return components
