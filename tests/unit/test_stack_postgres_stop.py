"""`stack down` stops PostgreSQL cleanly while a client still holds a session open."""

from __future__ import annotations

import glob
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agora import config
from stack.base import Context, wait_until
from stack.postgres import Postgres, pg_bin


@pytest.fixture(autouse=True)
def postgres_installed() -> None:
    # Missing, the tests fail: a skip would let CI pass without running them.
    if not glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        pytest.fail("needs PostgreSQL installed: `make run` (or `make test`) installs it")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: the server's socket path must fit in 107 bytes, which
    pytest's tmp_path under a clone's .state/test/pytest may not."""
    path = Path(tempfile.mkdtemp(prefix="pgstop-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def running(short_dir: Path) -> Iterator[Context]:
    """A cluster of its own, on a free port, started as the stack starts it."""
    ctx = Context(config.load({"AGORA_STATE_DIR": str(short_dir / "s")}))
    ctx.settings.ports["postgres"] = free_port()
    postgres = Postgres()
    postgres.prepare(ctx)
    postgres.start(ctx)
    try:
        wait_until("postgres", lambda: postgres.healthy(ctx), timeout=60, ctx=ctx)
        yield ctx
    finally:
        ctx.kill("postgres")


def test_a_client_session_does_not_keep_postgres_from_a_clean_stop(running: Context) -> None:
    ctx, postgres = running, Postgres()
    server = ["-h", str(ctx.data("postgres") / "run"), "-p", str(ctx.port("postgres"))]
    client = subprocess.Popen(
        [str(pg_bin("psql")), *server, "-U", "postgres", "-c", "select pg_sleep(600)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        in_session = "select count(*) from pg_stat_activity where query = 'select pg_sleep(600)'"
        wait_until("client", lambda: postgres.psql(ctx, in_session) == "1", timeout=30, ctx=ctx)
        assert postgres.down(ctx)
        assert client.wait(timeout=60) != 0, "its session was ended by the server"
    finally:
        client.kill()
        client.wait()
    log = ctx.log_file("postgres").read_text()
    assert "received fast shutdown request" in log
    assert "database system is shut down" in log, "stopped cleanly, not killed"
