"""`make test` never shares the dev profile's state folder or pids."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agora import config
from agora.config import REPO_ROOT

# Variables an enclosing `make` (make test-unit) passes down; the Makefile is read afresh.
MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def make_variable(name: str, env: dict[str, str]) -> str:
    """What the Makefile's `name` expands to in this environment."""
    return subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", f"show: ; @echo $({name})", "show"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_make_test_uses_its_own_state_folder_with_agora_state_dir_exported(
    tmp_path: Path,
) -> None:
    exported = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}
    exported.pop("AGORA_PROFILE", None)
    exported["AGORA_STATE_DIR"] = str(tmp_path / "dev")  # for `make run`
    dev = config.load(exported)
    test_env = dict(pair.split("=", 1) for pair in make_variable("TEST_ENV", exported).split())
    test = config.load({**exported, **test_env})
    assert test.profile == "test"
    assert test.state_dir == tmp_path / "dev" / "test"
    assert test.state_dir != dev.state_dir  # so are its pids, logs and data
    # What `make test` wipes before it starts is the test stack's folder.
    assert make_variable("TEST_STATE", exported) == str(test.state_dir)


def test_make_test_keeps_dot_state_test_without_agora_state_dir() -> None:
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES}
    env.pop("AGORA_STATE_DIR", None)
    assert make_variable("TEST_STATE", env) == str(REPO_ROOT / ".state" / "test")
