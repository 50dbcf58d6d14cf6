"""The command-line entry points log JSON like the services and show their progress."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench import reports
from workers.catalog import seed
from workers.identity import admin
from workflows.catalog import ImportProgress


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """The test's stdout / stderr; the root logger is put back as it was afterwards
    (the entry points under test point it at the captured stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield capsys
    root.handlers[:] = handlers
    root.setLevel(level)


def _library_warning_is_json(capture: pytest.CaptureFixture[str], service: str) -> None:
    logging.getLogger("temporalio.core").warning("metric export failed")
    line = json.loads(capture.readouterr().err.strip().splitlines()[-1])
    assert line["service"] == service
    assert line["level"] == "WARNING"
    assert line["logger"] == "temporalio.core"
    assert line["trace_id"] == ""


def test_seed_logs_library_warnings_as_json_with_service_seed(
    stderr: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_platform(*args: Any) -> int:
        return 0

    monkeypatch.setattr(seed, "main_async", no_platform)
    assert seed.main(["--products", "1"]) == 0
    _library_warning_is_json(stderr, "seed")


def test_identity_admin_logs_library_warnings_as_json_with_service_identity_admin(
    stderr: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_platform(settings: Any) -> None:
        return None

    monkeypatch.setattr(admin, "ensure_demo_admin", no_platform)
    assert admin.main(["ensure-demo-admin"]) == 0
    _library_warning_is_json(stderr, "identity-admin")


def test_bench_logs_library_warnings_as_json_and_keeps_its_report_on_stdout(
    stderr: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_main, "SCENARIOS", {})
    monkeypatch.setattr(reports, "write", lambda *args, **kwargs: Path("r/bench-x"))
    assert bench_main.main([]) == 0
    assert "written: r/bench-x.md and r/bench-x.json" in stderr.readouterr().out
    _library_warning_is_json(stderr, "bench")


def test_bench_says_to_start_the_platform_when_its_stores_are_not_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario(settings: Any) -> dict[str, Any]:
        raise AssertionError("no scenario runs without the platform")

    monkeypatch.setattr(bench_main, "SCENARIOS", {"auth": scenario})
    monkeypatch.setattr(bench_main, "_infrastructure_down", lambda _settings: ["postgres"])
    with pytest.raises(SystemExit, match=r"postgres not running: start the platform first"):
        bench_main.main([])


def test_bench_prints_a_line_before_and_after_each_scenario(
    stderr: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(settings: Any) -> dict[str, Any]:
        return {"title": "t", "rows": []}

    monkeypatch.setattr(bench_main, "SCENARIOS", {"auth": scenario, "catalog": scenario})
    results = bench_main.run_scenarios(["auth", "catalog"], settings=None)  # type: ignore[arg-type]
    assert list(results) == ["auth", "catalog"]
    lines = stderr.readouterr().err.splitlines()
    assert len(lines) == 4
    assert lines[0] == "bench: [1/2] auth ..."
    assert lines[1].startswith("bench: [1/2] auth done in ") and lines[1].endswith("s")
    assert lines[2] == "bench: [2/2] catalog ..."
    assert lines[3].startswith("bench: [2/2] catalog done in ")


@dataclass
class _Handle:
    count: int

    async def result(self) -> ImportProgress:
        return ImportProgress(import_id="x", total=self.count, created=self.count)


class _Client:
    async def start_workflow(self, run: Any, arg: Any, **options: Any) -> _Handle:
        return _Handle(len(arg.products))


async def test_seed_prints_a_line_as_each_import_chunk_completes(
    stderr: pytest.CaptureFixture[str],
) -> None:
    products = seed.generate(seed.CHUNK * 2 + 5)
    total = await seed.import_all(_Client(), products, 42)  # type: ignore[arg-type]
    assert total.total == total.created == len(products)
    lines = stderr.readouterr().err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("catalog import: chunk 1/3 done, ")
    assert lines[-1] == f"catalog import: chunk 3/3 done, {len(products)}/{len(products)} products"
