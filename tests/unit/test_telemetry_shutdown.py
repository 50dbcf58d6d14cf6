"""Telemetry's last flush is bounded when the collector cannot be reached."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from agora.telemetry import EXPORT_TIMEOUT_S

# Run in a process of its own: the providers are process-wide and installed once.
SCRIPT = """
import json, sys, time
from opentelemetry import metrics, trace
from agora import config
from agora.telemetry import setup_telemetry
telemetry = setup_telemetry(config.load(), "orders")
trace.get_tracer("t").start_span("buffered").end()
metrics.get_meter("m").create_counter("c").add(1)
started = time.monotonic()
telemetry.shutdown()
print(json.dumps({"shutdown_s": time.monotonic() - started}))
"""


def test_the_last_flush_to_an_unreachable_collector_ends_within_its_export_timeouts() -> None:
    # With the SDK's 10 s export timeout it took 12 s: after the 35 s drain budget that
    # was past Kubernetes' SIGKILL (40 s after SIGTERM), and `stopped` was never logged.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        refused = probe.getsockname()[1]  # closed once the block ends: refused
    env = {
        **os.environ,
        "AGORA_PROFILE": "test",
        "AGORA_TRACING": "on",
        "AGORA_OTLP_ENDPOINT": f"http://127.0.0.1:{refused}",
    }
    ran = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    shutdown_s = json.loads(ran.stdout.strip().splitlines()[-1])["shutdown_s"]
    # Each provider's flush is bounded by one export's timeout (retries included).
    assert shutdown_s < 3 * EXPORT_TIMEOUT_S, ran.stderr
