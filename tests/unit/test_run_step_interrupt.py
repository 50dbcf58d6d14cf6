"""A build step interrupted (Ctrl-C, SIGTERM) stops the command it runs and frees the
shared cache's lock: a background job starts with SIGINT ignored, and Go and the JVM
keep it ignored, so it ran on after the script, holding the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agora.config import REPO_ROOT

SCRIPT = """set -euo pipefail
HEARTBEAT=2
log() { echo "[t] $*"; }
exec {CACHE_LOCK}>"$DIR/build.lock"
flock -n "$CACHE_LOCK"
. "$REPO/deploy/local/run_step.sh"
run_step fake "$DIR/build.log" bash -c 'echo $$ > "$DIR/step.pid"; exec sleep 40'
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_step_stops_its_command_and_frees_the_lock(
    tmp_path: Path, stop: signal.Signals
) -> None:
    env = {**os.environ, "DIR": str(tmp_path), "REPO": str(REPO_ROOT)}
    script = subprocess.Popen(["bash", "-c", SCRIPT], env=env, start_new_session=True)
    pid_file = tmp_path / "step.pid"
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    step = int(pid_file.read_text())
    os.killpg(script.pid, stop)  # as Ctrl-C does to the foreground group
    assert script.wait(timeout=10) != 0
    deadline = time.monotonic() + 10
    while not _gone(step):
        assert time.monotonic() < deadline, "the step's command runs on"
        time.sleep(0.05)
    lock = subprocess.run(["flock", "-n", str(tmp_path / "build.lock"), "true"], check=False)
    assert lock.returncode == 0, "the cache lock is still held"
