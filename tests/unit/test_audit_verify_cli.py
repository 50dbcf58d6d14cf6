"""The verify CLI's exit status says which it is: verified (0), not (1), a usage error
(2), or no verdict at all (3) — an outage must never read as a broken chain."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys

import asyncpg
import pytest

from workers.audit import verify
from workers.audit.signing import CheckpointSigner

KEY = base64.b64encode(CheckpointSigner(bytes(32)).public_key.raw).decode()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_database_exits_3_not_the_broken_chain_status() -> None:
    env = {
        **os.environ,
        "AGORA_PROFILE": "test",
        "AGORA_POSTGRES_HOST": "127.0.0.1",
        "AGORA_PORT_POSTGRES": str(unused_port()),  # nothing listens there
    }
    result = subprocess.run(
        [sys.executable, "-m", "workers.audit.verify", "--public-key", KEY],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "could not verify" in result.stderr
    assert result.stdout == ""  # no report: there is no verdict to print


@pytest.mark.parametrize("given", ["-5", "-1", str(2**63), "ten"])
def test_a_to_sequence_that_is_no_log_sequence_is_a_usage_error(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        verify.main(["--to-sequence", given, "--public-key", KEY])
    assert refused.value.code == 2
    assert "--to-sequence" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        asyncpg.TooManyConnectionsError,
        asyncpg.CannotConnectNowError,
        asyncpg.QueryCanceledError,
    ],
)
def test_a_server_going_away_or_a_cancelled_walk_exits_3_not_the_broken_chain_status(
    error: type[Exception], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A failover, a server shutting down or full, a statement_timeout: no verdict.
    async def walk_cut_short(*_: object) -> None:
        raise error("cut short")

    monkeypatch.setattr(verify, "verify", walk_cut_short)
    assert verify.main(["--public-key", KEY]) == 3
    assert "could not verify" in capsys.readouterr().err
