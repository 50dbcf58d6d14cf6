"""The collector configurations are accepted by the collector binary we build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agora import config
from agora.config import REPO_ROOT

CACHE = config.load().cache_dir
BINARY = CACHE / "bin" / "otelcol-agora"


def validate(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Missing, the tests fail (a skip would let CI pass without validating the configs).
    if not BINARY.exists():
        pytest.fail(
            f"{BINARY} is missing: `make run` or `make test` builds it (needs Go), or build"
            f" it alone with `bash deploy/local/build_go_tools.sh {CACHE}`",
            pytrace=False,
        )
    return subprocess.run(
        [str(BINARY), "validate", f"--config={path}"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_production_config_sends_traces_to_tempo_logs_to_loki_metrics_to_prometheus() -> None:
    result = validate(
        REPO_ROOT / "deploy" / "otelcol" / "config.production.yaml",
        {
            "AGORA_ENVIRONMENT": "production",
            "TEMPO_OTLP_ENDPOINT": "tempo-distributor.observability:4317",
            "LOKI_OTLP_ENDPOINT": "https://loki-gateway.observability/otlp",
            "PROMETHEUS_REMOTE_WRITE_URL": "https://prometheus.observability/api/v1/write",
        },
    )
    assert result.returncode == 0, result.stderr
    text = (REPO_ROOT / "deploy" / "otelcol" / "config.production.yaml").read_text()
    assert "exporters: [otlp_grpc/tempo]" in text
    assert "exporters: [otlp_http/loki]" in text
    assert "exporters: [prometheus_remote_write]" in text


def test_local_config_is_valid() -> None:
    ports = {f"AGORA_{k.upper()}_PORT": str(v) for k, v in config.load().ports.items()}
    result = validate(REPO_ROOT / "deploy" / "otelcol" / "config.local.yaml", ports)
    assert result.returncode == 0, result.stderr


def test_a_broken_config_is_refused() -> None:
    broken = REPO_ROOT / "deploy" / "otelcol" / "config.production.yaml"
    text = broken.read_text().replace("otlp_grpc/tempo]", "tempo_that_does_not_exist]")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "otelcol-broken.yaml"
    path.write_text(text)
    assert (
        validate(
            path,
            {
                "AGORA_ENVIRONMENT": "x",
                "TEMPO_OTLP_ENDPOINT": "x:1",
                "LOKI_OTLP_ENDPOINT": "http://x",
                "PROMETHEUS_REMOTE_WRITE_URL": "http://x",
            },
        ).returncode
        != 0
    )
