"""A Temporal client certificate renewed on disk restarts the process (as SIGTERM
does) within the rollover window: the client cannot load it, and once the old one
expires every reconnect fails. Real files, real asyncio."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from temporalio.client import Client

from agora import config, pki, temporal
from agora.rollover import CertificateRollover
from gateway import app as gateway_app

CHECK_S = 0.01
DEADLINE_S = 10.0


async def until(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    ends = loop.time() + DEADLINE_S
    while not condition():
        if loop.time() > ends:
            raise AssertionError("never happened")
        await asyncio.sleep(CHECK_S)


@pytest.fixture
def client_dir(tmp_path: Path) -> Path:
    """A client certificate, its key and the CA, as cert-manager's Secret holds them."""
    pki.create_ca(tmp_path / "ca")
    pki.issue(tmp_path / "ca", tmp_path / "client", "agora.agora")
    return tmp_path / "client"


def contents(directory: Path) -> dict[Path, bytes]:
    return {directory / name: (directory / name).read_bytes() for name in ("tls.crt", "tls.key")}


class Shutdowns:
    """What SIGTERM's handler would have been asked: how many times."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def rollover_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "agora.rollover" and r.levelname == "WARNING"]


async def test_unchanged_or_only_touched_files_restart_nothing(client_dir: Path) -> None:
    shutdown, stopping = Shutdowns(), asyncio.Event()
    watcher = CertificateRollover(
        contents(client_dir), window_s=0, shutdown=shutdown, stopping=stopping, check_s=CHECK_S
    )
    task = asyncio.create_task(watcher.run())
    await until(lambda: watcher.checks >= 3)
    for path, data in contents(client_dir).items():
        path.write_bytes(data)  # rewritten, the same certificate and key
        os.utime(path, (1, 1))
    touched_at = watcher.checks
    await until(lambda: watcher.checks >= touched_at + 5)

    assert shutdown.calls == 0
    assert not task.done()
    stopping.set()  # the process's shutdown ends the watcher
    await asyncio.wait_for(task, DEADLINE_S)
    assert shutdown.calls == 0


async def test_a_renewed_certificate_shuts_down_once_within_the_window(
    client_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agora.rollover")
    shutdown, stopping = Shutdowns(), asyncio.Event()
    watcher = CertificateRollover(
        contents(client_dir), window_s=0.05, shutdown=shutdown, stopping=stopping, check_s=CHECK_S
    )
    task = asyncio.create_task(watcher.run())
    await until(lambda: watcher.checks >= 1)
    pki.issue(client_dir.parent / "ca", client_dir, "agora.agora")  # a new key and certificate

    await until(lambda: shutdown.calls > 0)
    await asyncio.wait_for(task, DEADLINE_S)  # done: nothing more to call
    assert shutdown.calls == 1
    renewed = x509.load_pem_x509_certificate((client_dir / "tls.crt").read_bytes())
    logged = {r.__dict__["file"]: r.__dict__.get("not_after") for r in rollover_logs(caplog)}
    assert logged == {
        str(client_dir / "tls.crt"): renewed.not_valid_after_utc.isoformat(),
        str(client_dir / "tls.key"): None,
    }


async def test_a_shutdown_begun_during_the_delay_calls_nothing_more(
    client_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agora.rollover")
    shutdown, stopping = Shutdowns(), asyncio.Event()
    watcher = CertificateRollover(
        contents(client_dir),
        window_s=3600,
        shutdown=shutdown,
        stopping=stopping,
        check_s=CHECK_S,
        rng=random.Random(0),  # a delay of most of the hour, not a few milliseconds
    )
    task = asyncio.create_task(watcher.run())
    pki.issue(client_dir.parent / "ca", client_dir, "agora.agora")
    await until(lambda: bool(rollover_logs(caplog)))  # renewal seen, its delay begun

    stopping.set()  # SIGTERM (a rollout, a scale-down) came first
    await asyncio.wait_for(task, DEADLINE_S)
    assert shutdown.calls == 0


async def test_the_files_watched_hold_what_the_client_connected_with(client_dir: Path) -> None:
    settings = config.load(
        {
            "AGORA_TEMPORAL_TLS_CERT": str(client_dir / "tls.crt"),
            "AGORA_TEMPORAL_TLS_KEY": str(client_dir / "tls.key"),
            "AGORA_TEMPORAL_TLS_CA": str(client_dir / "ca.crt"),
        }
    )
    connected_with = {
        **contents(client_dir),
        client_dir / "ca.crt": (client_dir / "ca.crt").read_bytes(),
    }
    client = await Client.connect(
        settings.temporal_address, tls=temporal.tls_config(settings), lazy=True
    )
    pki.issue(client_dir.parent / "ca", client_dir, "agora.agora")  # renewed after the connect

    assert temporal.connected_tls_files(client, settings) == connected_with


async def test_without_a_client_certificate_nothing_is_watched() -> None:
    settings = config.load({})
    client = await Client.connect(settings.temporal_address, lazy=True)
    assert temporal.connected_tls_files(client, settings) == {}


async def test_the_gateways_restart_reaches_its_sigterm_handler() -> None:
    """The gateway's stop event is out of reach of its app: it is sent SIGTERM."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    received = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, received.set)  # as agora.process.bootstrap does
    try:
        gateway_app._sigterm()
        await asyncio.wait_for(received.wait(), DEADLINE_S)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)


def test_the_rollover_window_defaults_to_an_hour_and_is_not_negative() -> None:
    assert config.load({}).temporal_tls_rollover_s == 3600
    assert config.load({"AGORA_TEMPORAL_TLS_ROLLOVER_S": "0"}).temporal_tls_rollover_s == 0
    with pytest.raises(ValueError, match="AGORA_TEMPORAL_TLS_ROLLOVER_S"):
        config.load({"AGORA_TEMPORAL_TLS_ROLLOVER_S": "-1"})
