"""`make test` stops its stack however the run ends: a failed test, or the run itself
stopped (a CI job cancelled: SIGTERM; its terminal closed: SIGHUP)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agora.config import REPO_ROOT
from tests.unit.test_profile_isolation import MAKE_VARIABLES

# Stands in for the venv's python: logs each `-m stack <command>` and `-m pytest`; pytest
# waits to be stopped, or fails at once with PYTEST_FAILS set.
FAKE_PYTHON = """#!/bin/bash
if [ "$2" = stack ]; then echo "stack-$3"; else echo "$2"; fi >> "$CALLS"
# A stop after the tests takes its time, as the real one's does (a signal may come meanwhile).
if [ "$2" = stack ] && grep -q pytest "$CALLS"; then sleep 1; fi
if [ "$2" = pytest ]; then
  [ -n "$PYTEST_FAILS" ] && exit 3
  sleep 60
fi
exit 0
"""


def _default_signals() -> None:
    for stop in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, signal.SIG_DFL)


def _make_test(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    environ = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}
    environ.update(CALLS=str(calls), AGORA_STATE_DIR=str(tmp_path / "state"), **env)
    # The prerequisites (venv, helm, the browser's) taken as made: only the recipe runs.
    command = ["make", "-s", "-o", "venv", "-o", "helm", "-o", "browser-deps"]
    command += ["test", f"PY={python}"]
    # As a terminal's job gets them: a run under nohup ignores SIGHUP, and an ignored
    # signal is inherited (a shell cannot even trap it), so the stand-in pytest slept on.
    make = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=environ,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        preexec_fn=_default_signals,
    )
    return make, calls


def _until(calls: Path, line: str) -> None:
    deadline = time.monotonic() + 20
    while line not in calls.read_text().split():
        assert time.monotonic() < deadline, calls.read_text()
        time.sleep(0.05)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_run_stopped_mid_tests_stops_its_stack(tmp_path: Path, stop: signal.Signals) -> None:
    make, calls = _make_test(tmp_path)
    _until(calls, "pytest")
    os.killpg(make.pid, stop)  # what a CI runner or a closing terminal does
    # make passes its own SIGTERM on to the recipe: on a loaded host it may land while
    # the stop runs. The stack is stopped once all the same.
    time.sleep(0.4)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(make.pid, stop)
    # Generous: on a host loaded by another suite (a CI run beside this one) the stop
    # took over 20 s once; what is checked is that it happens, not how fast.
    try:
        make.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"make still running; calls: {calls.read_text().split()}") from None
    time.sleep(1.5)  # the recipe's shell may run its trap after make has gone
    assert calls.read_text().split() == ["stack-down", "stack-up", "pytest", "stack-down"]


def test_a_failed_run_stops_its_stack_and_keeps_pytests_status(tmp_path: Path) -> None:
    make, calls = _make_test(tmp_path, PYTEST_FAILS="1")
    assert make.wait(timeout=20) != 0
    assert calls.read_text().split() == ["stack-down", "stack-up", "pytest", "stack-down"]
