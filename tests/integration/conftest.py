"""Fixtures for tests against the real local stack that `make test` starts.

Service processes are started here, per test session, as `python -m workers
<service>` subprocesses so that tests can kill and restart them like a crash.
Each is recorded in the stack's pids folder under the name the stack itself
gives it (`svc-<service>`, `gateway`), so `python -m stack down` stops what an
aborted run left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from elasticsearch import AsyncElasticsearch

from agora.config import Settings
from gateway.deps import Gateway
from stack.base import Context, port_free
from stack.platform import GatewayProcess as StackGateway
from stack.platform import PlatformProcess
from stack.platform import ServiceProcess as StackService
from tests.integration.gatewaykit import Api, TokenMinter, running_gateway

pytestmark = pytest.mark.integration


def stack_component(service: str) -> PlatformProcess:
    """The stack's own component for `service`: its pid record is the one `stack down` reads."""
    return StackGateway() if service == "gateway" else StackService(service)


def stack_runs(settings: Settings, service: str) -> bool:
    """True when the stack records `service` as running the current code, and it is ready.

    Something else answering on the service's ports (a process left over from an
    aborted run before they were recorded, or one on older code) is not reused.
    """
    component, ctx = stack_component(service), Context(settings)
    if ctx.running_pid(component.name) is None or component.stale(ctx):
        return False
    try:
        return component.healthy(ctx)
    except OSError:
        return False


class ServiceProcess:
    """One `python -m workers <service>` subprocess with its log in the test state folder."""

    def __init__(self, settings: Settings, service: str):
        self.settings = settings
        self.service = service
        self.component = stack_component(service)
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = settings.state_dir / "logs" / f"test-svc-{service}.log"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    @proc.setter
    def proc(self, proc: subprocess.Popen[bytes] | None) -> None:
        # Recorded the moment it exists, whoever starts it (observabilitykit's gateway
        # starts its own): an aborted run leaves nothing `stack down` does not know of.
        self._proc = proc
        if proc is not None:
            argv = proc.args if isinstance(proc.args, list) else [proc.args]
            self.component.adopt(Context(self.settings), proc.pid, argv)

    def start(self, timeout: float = 60) -> None:
        self.require_free_ports(
            self.settings.grpc_port(self.service), self.settings.side_port(self.service)
        )
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AGORA_PROFILE": self.settings.profile}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers", self.service],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        url = f"http://{self.settings.host}:{self.settings.side_port(self.service)}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.service} exited; see {self.log}:\n{tail(self.log)}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        # Not left behind on the test ports (Services registers a process once it is ready).
        self.kill()
        raise RuntimeError(f"{self.service} not ready in {timeout}s; see {self.log}")

    def require_free_ports(self, *ports: int) -> None:
        """Fail, naming the holder, if another process listens on one of `ports`.

        A service left over from an aborted run would answer /readyz in place of the
        new one, which dies on the taken port: the tests would run against old code.
        """
        for port in ports:
            if not port_free(self.settings.host, port):
                raise RuntimeError(
                    f"{self.service}: port {port} is taken by {listener(port)}, left over from "
                    f"an earlier run? Stop it (`AGORA_PROFILE={self.settings.profile} python -m "
                    f"stack down {self.component.name}` stops one the tests started) and run "
                    "the tests again."
                )

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None


def listener(port: int) -> str:
    """`pid N (command line)` of the process listening on `port`, when we may see it."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            try:
                return f"pid {conn.pid} ({' '.join(psutil.Process(conn.pid).cmdline())})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return "a process we cannot see"


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


@pytest.fixture(scope="session")
def stack_ctx(settings: Settings) -> Context:
    return Context(settings)


class Services:
    """Starts service processes on first use and stops them all at the end of the session."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.running: dict[str, ServiceProcess] = {}

    def __call__(self, service: str) -> ServiceProcess:
        process = self.running.get(service)
        if process is None or process.proc is None or process.proc.poll() is not None:
            process = ServiceProcess(self.settings, service)
            process.start()
            self.running[service] = process
        return process

    def stop_all(self) -> None:
        for process in self.running.values():
            process.stop()


@pytest.fixture(scope="session")
def services(settings: Settings) -> Iterator[Services]:
    """`services("catalog")` returns a running catalog process, started once per session."""
    registry = Services(settings)
    yield registry
    registry.stop_all()


@pytest.fixture(scope="session")
def identity_service(services: Services) -> ServiceProcess:
    return services("identity")


@pytest.fixture(scope="session")
def identity(settings: Settings, request: pytest.FixtureRequest) -> Iterator[ServiceProcess | None]:
    """Identity on the test stack (reused when the stack records it running the current code)."""
    if stack_runs(settings, "identity"):
        yield None
    else:
        yield request.getfixturevalue("identity_service")


@pytest.fixture(scope="session")
def minter(settings: Settings) -> TokenMinter:
    """Mints access tokens the test gateways accept (their JWKS includes its key)."""
    return TokenMinter(settings)


@pytest_asyncio.fixture(scope="session")
async def gateway(
    settings: Settings, identity: ServiceProcess | None, minter: TokenMinter
) -> AsyncIterator[tuple[Gateway, TestClient]]:
    """An in-process gateway on the test stack with identity running."""
    async with running_gateway(settings, minter) as running:
        yield running


@pytest.fixture
def gw(gateway: tuple[Gateway, TestClient]) -> Gateway:
    """The gateway's dependencies (its upstream clients, settings, caches)."""
    return gateway[0]


@pytest.fixture
def api(gateway: tuple[Gateway, TestClient]) -> Api:
    """A client of the gateway's HTTP API (register, sign in, bearer calls)."""
    return Api(gateway[1])


@pytest_asyncio.fixture
async def es(settings: Settings) -> AsyncIterator[AsyncElasticsearch]:
    """A client of the stack's Elasticsearch."""
    client = AsyncElasticsearch(settings.elasticsearch_url)
    yield client
    await client.close()
