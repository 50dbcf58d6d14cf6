"""Prometheus (Debian package) scraping every process's /metrics and the collector."""

from __future__ import annotations

import json
import shutil

from agora.config import REPO_ROOT, SERVICES
from stack.base import ComponentError, Context
from stack.component import Component, http_ok

CONFIG = """\
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - {rules}
scrape_configs:
  - job_name: prometheus
    static_configs: [{{targets: ["{host}:{prometheus}"]}}]
  - job_name: otelcol
    static_configs: [{{targets: ["{host}:{otelcol_prom}"]}}]
  - job_name: otelcol-self
    static_configs: [{{targets: ["{host}:{otelcol_self_metrics}"]}}]
  - job_name: temporal
    static_configs: [{{targets: ["{host}:{temporal_metrics}"]}}]
  - job_name: agora
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 5s
"""


class Prometheus(Component):
    name = "prometheus"
    ports = ("prometheus",)
    debian_packages = ("prometheus",)
    start_timeout = 60

    def installed(self, ctx: Context) -> bool:
        return shutil.which("prometheus") is not None

    def prepare(self, ctx: Context) -> None:
        root = ctx.data("prometheus")
        targets = root / "agora-targets.json"
        # Every platform process's side port; a process that is not running is simply down.
        entries = [
            {
                "targets": [f"{ctx.settings.host}:{ctx.settings.side_port(service)}"],
                "labels": {"service": service},
            }
            for service in (*SERVICES, "gateway")
        ]
        targets.write_text(json.dumps(entries, indent=2))
        rules = REPO_ROOT / "deploy" / "prometheus" / "rules" / "*.yml"
        (root / "prometheus.yml").write_text(
            CONFIG.format(
                host=ctx.settings.host, targets=targets, rules=rules, **ctx.settings.ports
            )
        )

    def start(self, ctx: Context) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ComponentError(
                self.name, "prometheus not found", hint="apt-get install prometheus"
            )
        root = ctx.data("prometheus")
        ctx.spawn(
            self.name,
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address={ctx.settings.host}:{ctx.port('prometheus')}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=7d",
                "--log.format=json",
            ],
        )

    def healthy(self, ctx: Context) -> bool:
        return http_ok(f"http://{ctx.settings.host}:{ctx.port('prometheus')}/-/ready")

    def urls(self, ctx: Context) -> dict[str, str]:
        return {"prometheus": f"http://{ctx.settings.host}:{ctx.port('prometheus')}"}
