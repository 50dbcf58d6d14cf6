"""The OpenTelemetry Collector (built by ocb from deploy/otelcol) and Jaeger v2, from Go sources.

Both binaries are built by deploy/local/build_go_tools.sh into the cache; a
second run finds them stamped and builds nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from agora.config import REPO_ROOT
from stack.base import Context, run_step, which
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


class GoBinary(Component):
    binary = ""

    def path(self, ctx: Context) -> Path:
        return ctx.cache / "bin" / self.binary

    def installed(self, ctx: Context) -> bool:
        # The build script decides whether the stamps still match the manifest and versions;
        # it answers "cached" in milliseconds when they do.
        return _built

    def install(self, ctx: Context) -> None:
        global _built
        if _built:
            return
        which(
            self.name,
            "go",
            hint="install Go (https://go.dev/doc/install) or apt-get install golang",
        )
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
    ports = ("jaeger_otlp", "jaeger_otlp_http", "jaeger_ui", "jaeger_health", "jaeger_self_metrics")

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
