"""`python -m bench` exits 1 when a target is missed, and says which on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from agora.config import Settings
from bench import reports


def _scenario(*targets: tuple[str, bool]) -> Any:
    async def run(settings: Settings) -> dict[str, Any]:
        return {
            "title": "a scenario",
            "rows": [],
            "targets": [
                {"name": name, "target_ms": 1.0, "measured_ms": 2.0, "met": met}
                for name, met in targets
            ],
        }

    return run


@pytest.fixture
def quiet_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bench_main, "_infrastructure_down", lambda settings: [])
    written = reports.write
    monkeypatch.setattr(
        reports, "write", lambda *a, **kw: written(*a, **{**kw, "folder": tmp_path})
    )


def test_a_missed_target_exits_1_and_names_it(
    quiet_bench: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        bench_main,
        "SCENARIOS",
        {"one": _scenario(("fast reads", True), ("many orders", False))},
    )
    assert bench_main.main(["one"]) == 1
    err = capsys.readouterr().err
    assert "targets not met: many orders" in err
    assert "fast reads" not in err.split("targets not met:")[1]


def test_every_target_met_exits_0_without_the_line(
    quiet_bench: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_main, "SCENARIOS", {"one": _scenario(("fast reads", True))})
    assert bench_main.main(["one"]) == 0
    assert "not met" not in capsys.readouterr().err
