"""Processes a scenario needs: reuse the stack's when they run, else start and stop them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from agora.config import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def process(
    name: str,
    argv: list[str],
    ready_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    timeout_s: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"bench-{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not http_ok(ready_url):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready in {timeout_s}s; see {log}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def service_running(settings: Settings, service: str) -> Iterator[None]:
    """The service of this profile, started for the bench unless it already runs."""
    url = f"http://{settings.host}:{settings.side_port(service)}/readyz"
    if http_ok(url):
        yield
        return
    with process(
        service,
        ["-m", "workers", service],
        url,
        settings.state_dir / "logs",
        env={"AGORA_PROFILE": settings.profile, "AGORA_LOG_LEVEL": "WARNING"},
    ):
        time.sleep(1.0)  # the gRPC port opens just after the side port reports ready
        yield


def identity_running(settings: Settings) -> AbstractContextManager[None]:
    return service_running(settings, "identity")
