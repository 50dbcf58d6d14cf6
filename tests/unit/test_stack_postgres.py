"""The stack's PostgreSQL: the binaries of the data folder's major, stale locks after a reboot,
an initdb cut short."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agora import config
from stack import postgres
from stack.base import ComponentError, Context
from stack.postgres import Postgres, pg_bin, remove_stale_locks


def _install(root: Path, *majors: str) -> None:
    for major in majors:
        (root / major / "bin").mkdir(parents=True)
        for tool in ("initdb", "postgres", "psql"):
            (root / major / "bin" / tool).touch()


def _data(tmp_path: Path, version: str) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text(f"{version}\n")
    return data


def test_a_new_cluster_gets_the_numerically_newest_major(tmp_path: Path) -> None:
    _install(tmp_path, "9.6", "15")
    assert pg_bin("initdb", tmp_path / "data", root=tmp_path) == tmp_path / "15/bin/initdb"
    assert pg_bin("psql", root=tmp_path) == tmp_path / "15/bin/psql"


def test_an_existing_cluster_runs_under_the_major_that_made_it(tmp_path: Path) -> None:
    _install(tmp_path / "lib", "15", "17")
    data = _data(tmp_path, "15")
    assert pg_bin("postgres", data, root=tmp_path / "lib") == tmp_path / "lib/15/bin/postgres"


def test_a_cluster_of_a_major_no_longer_installed_says_how_to_upgrade(tmp_path: Path) -> None:
    _install(tmp_path / "lib", "17")
    data = _data(tmp_path, "15")
    with pytest.raises(ComponentError, match="PostgreSQL 15") as error:
        pg_bin("postgres", data, root=tmp_path / "lib")
    assert "postgresql-15" in str(error.value)
    assert "pg_upgrade" in str(error.value)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context(config.load({"AGORA_STATE_DIR": str(tmp_path)}))


def _cluster(ctx: Context) -> tuple[Path, Path]:
    """A data folder as a cluster killed by a reboot leaves it (its run folder too)."""
    data, run = ctx.data("postgres") / "data", ctx.data("postgres") / "run"
    data.mkdir()
    run.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    (data / "global").mkdir()
    (data / "global" / "pg_control").touch()
    return data, run


def _locks(data: Path, run: Path, pid: int) -> list[Path]:
    content = f"{pid}\n{data}\n1795736068\n15532\n{run}\n127.0.0.1\n"
    locks = [data / "postmaster.pid", run / ".s.PGSQL.15532.lock"]
    for lock in locks:
        lock.write_text(content)
    return locks


def _calling_itself_postgres(cwd: Path) -> subprocess.Popen[str]:
    """A live process named postgres working in `cwd`, returned once it runs as such."""
    process = subprocess.Popen(
        ["postgres", "-c", "import sys; print(flush=True); sys.stdin.read()"],
        executable=sys.executable,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()  # exec'd: its command line is its own now
    return process


@pytest.fixture
def impostor(ctx: Context) -> Iterator[subprocess.Popen[str]]:
    """A process that calls itself postgres, working in the cluster's data folder."""
    data, _ = _cluster(ctx)
    process = _calling_itself_postgres(data)
    yield process
    process.kill()
    process.wait()


def test_start_up_removes_locks_whose_pid_was_reused_by_another_program(ctx: Context) -> None:
    data, run = _cluster(ctx)
    locks = _locks(data, run, os.getpid())  # a live pid, not a postgres
    Postgres().prepare(ctx)
    assert not any(lock.exists() for lock in locks)
    assert (data / "PG_VERSION").exists()


def test_start_up_removes_locks_of_a_pid_that_is_gone(ctx: Context) -> None:
    data, run = _cluster(ctx)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    locks = _locks(data, run, int(gone.stdout))
    Postgres().prepare(ctx)
    assert not any(lock.exists() for lock in locks)


def test_the_locks_of_a_postgres_working_in_the_data_folder_are_kept(
    ctx: Context, impostor: subprocess.Popen[str]
) -> None:
    data, run = ctx.data("postgres") / "data", ctx.data("postgres") / "run"
    locks = _locks(data, run, impostor.pid)
    assert remove_stale_locks(data, run) == []
    assert all(lock.exists() for lock in locks)


def test_the_locks_of_a_postgres_of_another_cluster_are_removed(
    ctx: Context, tmp_path: Path
) -> None:
    data, run = _cluster(ctx)
    elsewhere = tmp_path / "other-cluster"
    elsewhere.mkdir()
    other = _calling_itself_postgres(elsewhere)
    try:
        locks = _locks(data, run, other.pid)
        assert sorted(remove_stale_locks(data, run)) == sorted(locks)
    finally:
        other.kill()
        other.wait()


def _fake_initdb(calls: list[Path]) -> Callable[..., None]:
    """run_step as initdb would do it: PG_VERSION first, pg_control later."""

    def run(_: str, argv: list[object], **__: object) -> None:
        target = Path(str(argv[argv.index("-D") + 1]))
        calls.append(target)
        assert not any(target.iterdir()), "initdb needs an empty folder"
        (target / "PG_VERSION").write_text("15\n")
        (target / "global").mkdir()
        (target / "global" / "pg_control").touch()

    return run


def test_an_initdb_cut_short_is_started_over(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    # A kill -9 after PG_VERSION, initdb's first file: in place, the next run took the
    # folder for a cluster and postgres failed on every start.
    root = ctx.data("postgres")
    leftover = root / "data.initdb"
    leftover.mkdir(parents=True)
    (leftover / "PG_VERSION").write_text("15\n")
    calls: list[Path] = []
    monkeypatch.setattr(postgres, "run_step", _fake_initdb(calls))

    Postgres().prepare(ctx)

    assert calls == [leftover]
    assert (root / "data" / "global" / "pg_control").exists()
    assert not leftover.exists()


def test_a_failed_initdb_leaves_no_data_folder(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(_: str, argv: list[object], **__: object) -> None:
        (Path(str(argv[argv.index("-D") + 1])) / "PG_VERSION").write_text("15\n")
        raise ComponentError("postgres", "initdb failed")

    monkeypatch.setattr(postgres, "run_step", failing)
    with pytest.raises(ComponentError):
        Postgres().prepare(ctx)
    assert not (ctx.data("postgres") / "data").exists()

    calls: list[Path] = []
    monkeypatch.setattr(postgres, "run_step", _fake_initdb(calls))
    Postgres().prepare(ctx)  # the next run starts over
    assert (ctx.data("postgres") / "data" / "global" / "pg_control").exists()


def test_a_data_folder_without_pg_control_is_refused_with_the_fix(ctx: Context) -> None:
    data = ctx.data("postgres") / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")  # an in-place initdb killed early
    with pytest.raises(ComponentError, match="interrupted initdb") as error:
        Postgres().prepare(ctx)
    assert f"rm -rf {data}" in str(error.value)
