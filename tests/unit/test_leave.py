"""Entry points leave with the status `sys.exit` would give, their output flushed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(body: str) -> subprocess.CompletedProcess[str]:
    program = f"from agora.leave import run_and_leave\n{body}\nrun_and_leave(main)\n"
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("def main():\n    return None", 0),
        ("def main():\n    return 3", 3),
        ("def main():\n    raise SystemExit(4)", 4),
        ("def main():\n    raise SystemExit('no such product')", 1),
        ("def main():\n    raise ValueError('boom')", 1),
    ],
)
def test_the_exit_status_is_the_one_sys_exit_would_give(body: str, status: int) -> None:
    assert run(body).returncode == status


def test_buffered_output_and_the_failure_are_written_before_leaving() -> None:
    done = run("def main():\n    print('seeded', end='')\n    raise SystemExit('then failed')")
    assert (done.stdout, done.stderr.strip()) == ("seeded", "then failed")
    crashed = run("def main():\n    raise ValueError('boom')")
    assert "ValueError: boom" in crashed.stderr


def test_a_crash_after_logging_is_set_up_is_one_json_line_with_service_and_level() -> None:
    crashed = run(
        "from agora.logs import setup_logging\n"
        "def main():\n    setup_logging('catalog')\n    raise ConnectionRefusedError('postgres')"
    )
    assert crashed.returncode == 1
    lines = crashed.stderr.strip().splitlines()
    assert len(lines) == 1, crashed.stderr  # not a multi-line traceback
    record = json.loads(lines[0])
    assert (record["service"], record["level"]) == ("catalog", "CRITICAL")
    assert "ConnectionRefusedError: postgres" in json.dumps(record)
