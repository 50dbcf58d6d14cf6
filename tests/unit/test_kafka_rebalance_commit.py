"""A rebalance listener that cannot commit its round still lets the member rejoin."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from agora import kafka


class StuckConsumer:
    """aiokafka retries a commit's retriable errors without end (a broker coming back)."""

    def __init__(self) -> None:
        self.commits = 0

    async def commit(self, offsets: object) -> None:
        self.commits += 1
        await asyncio.Event().wait()


async def test_a_commit_that_never_ends_does_not_hold_the_rejoin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "REVOKE_COMMIT_S", 0.2)
    consumer = StuckConsumer()
    tp = TopicPartition("orders.events", 0)
    round_ = kafka._Round(consumer, "audit")  # type: ignore[arg-type]
    round_.begin()
    round_.done = {tp: 42}
    # The listener returns (its records are delivered again) instead of waiting on.
    await asyncio.wait_for(round_.on_partitions_revoked({tp}), 5)
    assert consumer.commits == 1 and round_.interrupted
