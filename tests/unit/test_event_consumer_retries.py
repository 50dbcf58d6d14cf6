"""The consumer's retry loop: transient errors retried, a cancel (shutdown) obeyed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from aiokafka import ConsumerRecord

from agora import config, kafka
from agora.errors import PoisonMessage
from agora.kafka import ConsumerSpec, Decoded, EventConsumer
from contracts.agora.events.v1 import EventEnvelope


def batch() -> list[Decoded]:
    envelope = EventEnvelope(event_id="e-1", event_type="test.Thing")
    record = ConsumerRecord("t", 0, 0, 0, 0, b"k", bytes(envelope), None, 0, 0, [])
    return [(envelope, record)]


def consumer(handler: kafka.BatchHandler) -> EventConsumer:
    spec = ConsumerSpec(group="g", topics=["t"], batch_handler=handler)
    return EventConsumer(config.load({}), spec, producer=None)  # type: ignore[arg-type]


async def test_a_transient_error_is_retried_until_the_handler_succeeds() -> None:
    calls: list[int] = []

    async def flaky(_: Sequence[Decoded]) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("database briefly away")

    assert await consumer(flaky)._apply(batch(), flaky) is None
    assert len(calls) == 3


async def test_a_cancel_during_the_handler_ends_the_loop_instead_of_being_retried() -> None:
    started = asyncio.Event()
    calls: list[int] = []

    async def slow(_: Sequence[Decoded]) -> None:
        calls.append(1)
        if len(calls) > 1:  # ends the loop a swallowed cancel would keep going
            raise PoisonMessage("called again after the cancel")
        started.set()
        await asyncio.sleep(3600)  # a handler waiting on an engine that is down

    task = asyncio.create_task(consumer(slow)._apply(batch(), slow))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == [1], "the cancelled handler was not called again"
