"""Helpers for the Temporal UI tests: browser set-up and screenshots.

The Temporal dev server's UI was started pointed at `settings.ui_codec_endpoint`
(the gateway's port, `/codec`), so the browser test needs the gateway listening
exactly there: `gatewaykit.running_gateway(..., on_gateway_port=True)` runs the
real gateway application in process on that port (the test stack starts no
gateway process).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agora.config import REPO_ROOT

BROWSER_DIR = REPO_ROOT / "tests" / "browser"
SCREENSHOTS = REPO_ROOT / "reports" / "screenshots"


def install_browser() -> None:
    """Debian's chromium and the pinned playwright-core (npm ci); idempotent, says what it does."""
    result = subprocess.run(["bash", str(BROWSER_DIR / "install.sh")], text=True)
    if result.returncode != 0:
        raise RuntimeError("installing the browser test's dependencies failed (output above)")


def run_browser_script(
    env: dict[str, str], timeout_s: float = 240
) -> subprocess.CompletedProcess[str]:
    """Runs tests/browser/temporal_ui.mjs; its last stdout line is a JSON report."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["node", str(BROWSER_DIR / "temporal_ui.mjs")],
        cwd=BROWSER_DIR,
        env={**os.environ, "SCREENSHOT_DIR": str(SCREENSHOTS), **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def screenshot(name: str) -> Path:
    return SCREENSHOTS / name
