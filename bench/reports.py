"""Where every bench command writes its report: reports/<kind>-<UTC start>.md and .json."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from agora.config import REPO_ROOT


def write(
    kind: str,
    started: datetime,
    markdown: str,
    document: dict[str, Any],
    *,
    default: Callable[[Any], Any] | None = None,
    folder: Path | None = None,
) -> Path:
    """Both files side by side (reports/ is git-ignored); returns their common stem."""
    reports = folder or REPO_ROOT / "reports"
    reports.mkdir(exist_ok=True)
    stem = reports / f"{kind}-{started.strftime('%Y%m%dT%H%M%SZ')}"
    stem.with_suffix(".md").write_text(markdown)
    stem.with_suffix(".json").write_text(json.dumps(document, default=default, indent=2))
    return stem
