"""Agora's own processes: one per service (`python -m workers <service>`) and the gateway."""

from __future__ import annotations

import importlib.util
import os
import sys

from agora.config import SERVICES
from stack.base import Context
from stack.component import Component, http_ok


def _profile_env(ctx: Context) -> dict[str, str]:
    """What a child process needs to resolve the same settings as this stack."""
    keys = ("AGORA_PROFILE", "AGORA_STATE_DIR", "AGORA_CACHE_DIR", "AGORA_PORT_OFFSET")
    env = {key: os.environ[key] for key in keys if key in os.environ}
    env["AGORA_PROFILE"] = ctx.settings.profile
    env["AGORA_STATE_DIR"] = str(ctx.settings.state_dir)
    return env


class ServiceProcess(Component):
    """`python -m workers <service>`: worker + gRPC server + consumers + relay + side port."""

    start_timeout = 60

    def __init__(self, service: str):
        self.service = service
        self.name = f"svc-{service}"
        self.ports = (f"{service}_grpc", f"{service}_side")

    def start(self, ctx: Context) -> None:
        ctx.spawn(
            self.name,
            [sys.executable, "-m", "workers", self.service],
            env={**_profile_env(ctx), "AGORA_SERVICE": self.service},
        )

    def healthy(self, ctx: Context) -> bool:
        return http_ok(f"http://{ctx.settings.host}:{ctx.settings.side_port(self.service)}/readyz")

    def urls(self, ctx: Context) -> dict[str, str]:
        host = ctx.settings.host
        return {
            self.name: f"grpcs://{host}:{ctx.settings.grpc_port(self.service)} "
            f"(metrics http://{host}:{ctx.settings.side_port(self.service)}/metrics)"
        }


class GatewayProcess(Component):
    name = "gateway"
    ports = ("gateway", "gateway_side")
    start_timeout = 60

    def start(self, ctx: Context) -> None:
        ctx.spawn(
            self.name,
            [sys.executable, "-m", "gateway"],
            env={**_profile_env(ctx), "AGORA_SERVICE": "gateway"},
        )

    def healthy(self, ctx: Context) -> bool:
        return http_ok(f"http://{ctx.settings.host}:{ctx.port('gateway')}/healthz")

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
