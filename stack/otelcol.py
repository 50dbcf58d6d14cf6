"""The OpenTelemetry Collector (built by ocb from deploy/otelcol) and Jaeger v2, from Go sources.

Both binaries are built by deploy/local/build_go_tools.sh into the cache; a
second run finds them stamped and builds nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from agora.config import REPO_ROOT
from stack.base import ComponentError, Context, run_step, which
from stack.component import Component, http_ok

BUILD = REPO_ROOT / "deploy" / "local" / "build_go_tools.sh"
_built = False  # one build-script run (it builds or finds both binaries) per stack command


def telemetry_env(ctx: Context) -> dict[str, str]:
    """The ports both configs read as ${env:...}."""
    return {
        f"AGORA_{name.upper()}_PORT": str(ctx.port(name))
        for name in (
            "otelcol_grpc",
            "otelcol_http",
            "otelcol_prom",
            "otelcol_health",
            "otelcol_self_metrics",
            "jaeger_otlp",
            "jaeger_otlp_http",
            "jaeger_ui",
            "jaeger_health",
            "jaeger_self_metrics",
            "jaeger_query_grpc",
        )
    }


# The builds use `go get -tool` (Go 1.24). Debian 12's `golang` package is Go 1.19.
MIN_GO = (1, 24)
GO_HINT = "install Go 1.24 or newer from https://go.dev/dl/ and put its bin/ on PATH"


def _go_version(text: str) -> tuple[int, int]:
    """(major, minor) of "go1.24.3" (or "go1.25rc1"); (0, 0) when it is not one."""
    match = re.match(r"go(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else (0, 0)


class GoBinary(Component):
    binary = ""

    def path(self, ctx: Context) -> Path:
        return ctx.cache / "bin" / self.binary

    def installed(self, ctx: Context) -> bool:
        # The build script decides whether the stamps still match the manifest and versions;
        # it answers "cached" in milliseconds when they do.
        return _built

    def preflight(self, ctx: Context) -> None:
        go = which(self.name, "go", hint=GO_HINT)
        found = subprocess.run(
            [go, "env", "GOVERSION"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if _go_version(found) < MIN_GO:
            raise ComponentError(
                self.name,
                f"found {found or 'a go that does not say its version'},"
                f" need go{MIN_GO[0]}.{MIN_GO[1]} or newer",
                hint=GO_HINT,
            )

    def install(self, ctx: Context) -> None:
        global _built
        if _built:
            return
        run_step(self.name, ["bash", BUILD, ctx.cache], ctx=ctx, env=dict(os.environ), tee=True)
        _built = True


class OtelCollector(GoBinary):
    name = "otelcol"
    binary = "otelcol-agora"
    ports = (
        "otelcol_grpc",
        "otelcol_http",
        "otelcol_prom",
        "otelcol_health",
        "otelcol_self_metrics",
    )

    def start(self, ctx: Context) -> None:
        ctx.spawn(
            self.name,
            [self.path(ctx), f"--config={REPO_ROOT / 'deploy' / 'otelcol' / 'config.local.yaml'}"],
            env=telemetry_env(ctx),
        )

    def healthy(self, ctx: Context) -> bool:
        return http_ok(f"http://{ctx.settings.host}:{ctx.port('otelcol_health')}/")

    def urls(self, ctx: Context) -> dict[str, str]:
        return {"otel-collector": f"otlp+grpc://{ctx.settings.host}:{ctx.port('otelcol_grpc')}"}


class Jaeger(GoBinary):
    name = "jaeger"
    binary = "jaeger"
    ports = (
        "jaeger_otlp",
        "jaeger_otlp_http",
        "jaeger_ui",
        "jaeger_health",
        "jaeger_self_metrics",
        "jaeger_query_grpc",
    )

    def start(self, ctx: Context) -> None:
        ctx.spawn(
            self.name,
            [self.path(ctx), f"--config={REPO_ROOT / 'deploy' / 'jaeger' / 'config.yaml'}"],
            env=telemetry_env(ctx),
        )

    def healthy(self, ctx: Context) -> bool:
        return http_ok(f"http://{ctx.settings.host}:{ctx.port('jaeger_health')}/status")

    def urls(self, ctx: Context) -> dict[str, str]:
        return {"jaeger": f"http://{ctx.settings.host}:{ctx.port('jaeger_ui')}"}
