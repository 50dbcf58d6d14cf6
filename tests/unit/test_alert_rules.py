"""The alerting rules are valid and their promtool unit tests pass (firing and not firing)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from agora.config import REPO_ROOT

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
# Part of the environment the tests need, like PostgreSQL: missing, the tests fail
# (a skip would let CI pass without ever running the alerts' unit tests).
INSTALL_HINT = (
    "promtool is not on PATH: install the Prometheus tools (`apt-get install prometheus`,"
    " which the local stack of `make run` / `make test` needs too)"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=PROMETHEUS)


def test_rule_files_are_valid() -> None:
    result = run("check", "rules", *(str(p) for p in (PROMETHEUS / "rules").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_say() -> None:
    result = run("test", "rules", *(str(p) for p in (PROMETHEUS / "tests").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    alerts = {
        rule["alert"]
        for path in (PROMETHEUS / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = {
        case["alertname"]
        for path in (PROMETHEUS / "tests").glob("*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert alerts <= tested, f"alerts without a promtool test: {sorted(alerts - tested)}"
