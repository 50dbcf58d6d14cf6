"""A process refusing its settings says so in JSON lines, like everything else it logs.

The settings are read before the process sets logging up at their level, so logging
is set up once before reading them: a refused AGORA_TRACING used to be a bare,
multi-line traceback that a log pipeline splits into unreadable lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BAD_SETTINGS = [("AGORA_TRACING", "maybe"), ("AGORA_LOG_LEVEL", "LOUD")]


def start(command: list[str], variable: str, value: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, variable: value}
    # The timeout only stops a process that started anyway (it would wait for the stores).
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("variable", "value"), BAD_SETTINGS)
@pytest.mark.parametrize(
    ("command", "service"),
    [
        (["workers", "catalog"], "catalog"),
        (["gateway"], "gateway"),
        (["bench.load"], "bench-load"),
        (["bench.chaos"], "bench-chaos"),
        (["workers.catalog.seed"], "seed"),
        (["workers.identity.admin", "ensure-demo-admin"], "identity-admin"),
    ],
)
def test_a_refused_setting_is_json_lines_naming_the_variable(
    command: list[str], service: str, variable: str, value: str
) -> None:
    done = start(command, variable, value)
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).splitlines()
    assert lines, "the refusal is logged"
    records = [json.loads(line) for line in lines]  # every line, not only the last
    assert all(r["service"] == service and r["level"] for r in records), records
    assert variable in json.dumps(records[-1]) and repr(value) in json.dumps(records[-1])
