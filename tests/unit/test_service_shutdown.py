"""A service's shutdown: a component that crashes while draining fails the process.

run_service is wired here to stand-ins for its stores, Kafka, Temporal and gRPC (the
shutdown's order and bookkeeping are under test, not those clients; the integration
suite runs the real processes)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from agora import config, service
from agora.service import ServiceDefinition, ServiceParts

STARTING = service.starting


class Closable:
    async def stop(self) -> None: ...

    async def aclose(self) -> None: ...

    async def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Side:
    def __init__(self, *_: Any):
        self.started = False
        self.draining = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def add_check(self, *_: Any) -> None: ...


class Worker:
    def __init__(self, *_: Any, **__: Any):
        self.done = asyncio.Event()

    async def run(self) -> None:
        await self.done.wait()

    async def shutdown(self) -> None:
        self.done.set()


class Relay:
    """Its last flush, after the worker's shutdown, fails."""

    def __init__(self, *_: Any):
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        await self.stopping.wait()
        raise RuntimeError("the last flush failed")

    def stop(self) -> None:
        self.stopping.set()


async def forever(*_: Any) -> None:
    await asyncio.Event().wait()


async def give(value: Any) -> Any:
    return value


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    stop = asyncio.Event()
    telemetry = SimpleNamespace(shutdown=lambda: None)
    monkeypatch.setattr(service, "bootstrap", lambda *_: (telemetry, stop))
    monkeypatch.setattr(service, "SidePort", Side)
    monkeypatch.setattr(service, "starting", lambda _what, step, **__: step())
    monkeypatch.setattr(
        service,
        "db",
        SimpleNamespace(migrate=lambda *_: give(0), create_pool=lambda *_, **__: give(Closable())),
    )
    monkeypatch.setattr(service, "aioredis", SimpleNamespace(from_url=lambda *_, **__: Closable()))
    monkeypatch.setattr(
        service,
        "kafka",
        SimpleNamespace(started_producer=lambda *_: give(Closable()), EventConsumer=None),
    )
    monkeypatch.setattr(
        service,
        "temporal",
        SimpleNamespace(
            connect=lambda *_: give(object()),
            workflow_runner=lambda: None,
            connected_tls_files=lambda *_: None,
        ),
    )
    channels = SimpleNamespace(close=lambda: None)
    monkeypatch.setattr(
        service,
        "grpc",
        SimpleNamespace(
            Channels=lambda *_, **__: channels,
            start_server=lambda *_: give(Closable()),
            drain=lambda _: give(None),
        ),
    )
    monkeypatch.setattr(service, "pki", SimpleNamespace(watch_certificates=forever))
    monkeypatch.setattr(service, "Worker", Worker)
    monkeypatch.setattr(service, "OutboxRelay", Relay)
    return stop


async def test_a_component_failing_while_draining_fails_the_process(
    wired: asyncio.Event, caplog: pytest.LogCaptureFixture
) -> None:
    definition = ServiceDefinition(name="orders", build=lambda _: give(ServiceParts()))
    asyncio.get_running_loop().call_later(0.05, wired.set)  # SIGTERM, once it runs

    # Awaited here, not in a task (nor wait_for's): asyncio lets a task's SystemExit out
    # of the loop.
    with caplog.at_level(logging.ERROR, logger="agora.service"):
        with pytest.raises(SystemExit) as leaving:
            async with asyncio.timeout(10):
                await service.run_service(definition, config.load({}))

    assert leaving.value.code == 1
    [failure] = [r for r in caplog.records if r.getMessage() == "component failed"]
    assert failure.task == "outbox-relay"  # type: ignore[attr-defined]
    assert "the last flush failed" in str(failure.exc_info[1] if failure.exc_info else "")


async def test_a_clean_shutdown_leaves_quietly(
    wired: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    class QuietRelay(Relay):
        async def run(self) -> None:
            await self.stopping.wait()

    monkeypatch.setattr(service, "OutboxRelay", QuietRelay)
    definition = ServiceDefinition(name="orders", build=lambda _: give(ServiceParts()))
    asyncio.get_running_loop().call_later(0.05, wired.set)
    async with asyncio.timeout(10):
        await service.run_service(definition, config.load({}))  # no SystemExit


@pytest.mark.parametrize("step", ["migrations", "temporal client"])
async def test_a_stop_while_starting_ends_the_wait(
    wired: asyncio.Event, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # A pod told to stop while it waited at start (the migrations' lock held by
    # another pod, Temporal away) read SIGTERM only once started: it used its whole
    # grace period and was killed.
    ran: list[str] = []
    monkeypatch.setattr(service, "starting", STARTING)  # the real one, with its stop
    waits = {
        "migrations": (service.db, "migrate"),
        "temporal client": (service.temporal, "connect"),
    }
    monkeypatch.setattr(*waits[step], forever)
    monkeypatch.setattr(service, "Worker", lambda *_, **__: ran.append("worker"))
    asyncio.get_running_loop().call_later(0.05, wired.set)  # SIGTERM while waiting
    definition = ServiceDefinition(name="orders", build=lambda _: give(ServiceParts()))

    async with asyncio.timeout(10):
        await service.run_service(definition, config.load({}))  # no SystemExit

    assert ran == []


async def test_a_component_cut_off_by_the_budget_is_named(
    wired: asyncio.Event, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A relay whose last flush outlasts the budget is cancelled: nothing is lost (its
    # rows stay in the outbox), but on-call could not tell it was cut.
    class SlowRelay(Relay):
        async def run(self) -> None:
            await self.stopping.wait()
            await asyncio.Event().wait()  # a flush that never ends

    monkeypatch.setattr(service, "OutboxRelay", SlowRelay)
    monkeypatch.setattr(service, "SHUTDOWN_BUDGET_S", 0.2)
    definition = ServiceDefinition(name="orders", build=lambda _: give(ServiceParts()))
    asyncio.get_running_loop().call_later(0.05, wired.set)
    with caplog.at_level(logging.WARNING, logger="agora.service"):
        async with asyncio.timeout(10):
            await service.run_service(definition, config.load({}))
    [cut] = [r for r in caplog.records if r.getMessage().startswith("shutdown budget spent")]
    assert cut.tasks == ["outbox-relay"]  # type: ignore[attr-defined]
