"""A starting process rides out a dependency's brief outage instead of crash-looping."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError

from agora import process
from agora.service import starting


async def test_a_step_is_retried_while_its_dependency_is_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = [KafkaConnectionError(), ConnectionRefusedError(), RuntimeError("connect")]
    calls = 0

    async def step() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "up"

    monkeypatch.setattr(process, "wait_exponential", lambda **_: lambda _state: 0)
    assert await starting("kafka producer", step, also=(RuntimeError,)) == "up"
    assert calls == 4


async def test_a_step_that_is_wrong_fails_at_once() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("AGORA_DB_POOL_SIZE must be a number")

    with pytest.raises(ValueError, match="POOL_SIZE"):
        await starting("database pool", step)
    assert calls == 1


async def test_an_outage_longer_than_the_patience_ends_the_start() -> None:
    async def step() -> None:
        raise ConnectionRefusedError("postgres")

    with pytest.raises(ConnectionRefusedError):
        await starting("migrations", step, patience_s=0.3)


async def test_search_rides_out_elasticsearch_restarting_while_it_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its client's errors are not OSErrors: the first refused connection ended the
    # start, and the pod went into a crash-loop back-off.
    import elastic_transport

    from workers.search import DEFINITION

    failures = [
        elastic_transport.ConnectionError("refused"),
        elastic_transport.ConnectionTimeout("timed out"),
    ]

    async def build() -> str:
        if failures:
            raise failures.pop(0)
        return "built"

    monkeypatch.setattr(process, "wait_exponential", lambda **_: lambda _state: 0)
    built = await starting("service parts", build, also=DEFINITION.start_transient)
    assert (built, failures) == ("built", [])
