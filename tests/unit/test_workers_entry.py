"""`python -m workers <service>` fails in JSON: a dependency missing from an image
is one log line with the service and level, not a bare traceback (or, as before, a
claim that the service "is not implemented yet")."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Runs the entry point with `grpclib` (which the runtime imports) missing, as from an
# image built without it.
BLOCKED = textwrap.dedent(
    """
    import builtins, runpy, sys
    real = builtins.__import__
    def blocked(name, *args, **kwargs):
        if name.split(".")[0] == "grpclib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)
    builtins.__import__ = blocked
    sys.argv = ["workers", "search"]
    runpy.run_module("workers", run_name="__main__")
    """
)


@pytest.mark.parametrize(
    ("module", "argv", "service"),
    [
        ("workers", '["workers", "search"]', "search"),
        # The gateway's entry point imported aiohttp, temporalio, grpclib, redis and
        # joserfc before logging was set up: a bare traceback, no "crashed" line.
        ("gateway", '["gateway"]', "gateway"),
    ],
)
def test_a_missing_dependency_is_one_json_line_naming_the_service(
    module: str, argv: str, service: str
) -> None:
    script = BLOCKED.replace('["workers", "search"]', argv).replace(
        'run_module("workers"', f'run_module("{module}"'
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 1, ran.stderr
    lines = [json.loads(line) for line in ran.stderr.splitlines()]
    [crash] = [line for line in lines if line["message"] == "crashed"]
    assert (crash["service"], crash["level"]) == (service, "CRITICAL")
    assert "No module named 'grpclib" in crash["exc_info"]
