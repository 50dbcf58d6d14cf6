"""Helpers for the observability tests: a real gateway process, Jaeger and Prometheus reads.

The gateway runs as `python -m gateway` (not in the test process) so that its spans
carry its own service name and its JSON log lands beside the services' logs, where
`make logs TRACE=<id>` reads it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from agora.config import Settings
from tests.integration.conftest import ServiceProcess, tail

ROOMY = "1000/s burst 1000"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", re.I)
LONG_HEX = re.compile(r"[0-9a-f]{16,}", re.I)


class GatewayProcess(ServiceProcess):
    """`python -m gateway` on the profile's ports, logging to test-svc-gateway.log."""

    def __init__(self, settings: Settings):
        super().__init__(settings, "gateway")

    def start(self, timeout: float = 60) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.require_free_ports(self.settings.ports["gateway"], self.settings.ports["gateway_side"])
        env = {
            **os.environ,
            "AGORA_PROFILE": self.settings.profile,
            "AGORA_SERVICE": "gateway",
            # Limits out of the way: these tests are about telemetry, not admission.
            **{f"AGORA_RATE_LIMIT_{name.upper()}": ROOMY for name in self.settings.rate_limits},
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        url = f"http://{self.settings.host}:{self.settings.ports['gateway_side']}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited; see {self.log}:\n{tail(self.log)}")
            if http_json(url) is not None:
                return
            time.sleep(0.2)
        self.kill()  # not left behind on the test ports
        raise RuntimeError(f"gateway not ready in {timeout}s; see {self.log}")


def http_json(url: str) -> Any | None:
    """The JSON body of a 200 answer, None when the server is down or answers otherwise."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read()
    except OSError:
        return None
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def jaeger_trace(settings: Settings, trace_id: str) -> dict[str, Any]:
    """One trace from Jaeger's query API: {"spans": [...], "processes": {...}} or {}."""
    url = f"http://{settings.host}:{settings.ports['jaeger_ui']}/api/traces/{trace_id}"
    body = http_json(url) or {}
    traces = body.get("data") or []
    return traces[0] if traces else {}


def tag(span: dict[str, Any], key: str) -> Any:
    return next((t["value"] for t in span.get("tags", ()) if t["key"] == key), None)


def services_of(trace: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The trace's spans grouped by the service.name of the process that recorded them."""
    processes = {pid: p["serviceName"] for pid, p in (trace.get("processes") or {}).items()}
    grouped: dict[str, list[dict[str, Any]]] = {}
    for span in trace.get("spans", ()):
        grouped.setdefault(processes.get(span["processID"], "?"), []).append(span)
    return grouped


def prometheus_query(settings: Settings, expr: str) -> dict[str, Any]:
    """Prometheus's /api/v1/query answer (status, data or error), never raising on 4xx."""
    url = (
        f"http://{settings.host}:{settings.ports['prometheus']}/api/v1/query?"
        + urllib.parse.urlencode({"query": expr})
    )
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        answer = json.loads(error.read() or b"{}") or {"status": "error", "error": str(error)}
    return answer


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def looks_like_an_id(value: str) -> bool:
    return bool(UUID.search(value) or EMAIL.search(value) or LONG_HEX.search(value))
