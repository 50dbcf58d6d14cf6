"""A rebalance listener that cannot commit its round still lets the member rejoin."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from agora import config, kafka


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


class RecordingConsumer:
    """Holds `assigned`; records each commit's offsets."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


def consumer_of(group: str) -> kafka.EventConsumer:
    async def handle(_: object) -> None:
        pass

    spec = kafka.ConsumerSpec(group=group, topics=["orders.events"], batch_handler=handle)
    return kafka.EventConsumer(config.load({}), spec, producer=None)  # type: ignore[arg-type]


P, Q = TopicPartition("orders.events", 0), TopicPartition("orders.events", 1)


async def round_on(client: RecordingConsumer) -> kafka._Round:
    """A round begun on `client`'s partitions, assigned to it, P done to 100."""
    round_ = kafka._Round(client, "audit")  # type: ignore[arg-type]
    await round_.on_partitions_assigned(client.assigned)
    round_.begin()
    round_.finished(P, 100, round_.forgotten)
    return round_


async def test_a_partition_given_up_and_back_within_a_round_is_not_committed_back() -> None:
    # P done to 100, then P moved to another member (which took it to 200 and committed)
    # and came back while a slow batch of Q held the round: the round's commit of P at
    # 100 moved the group back, and records 100-199 were applied again later. Q's
    # batch, fetched before the rebalance, is not this assignment's either.
    client = RecordingConsumer({P, Q})
    round_ = await round_on(client)
    fetched_in = round_.forgotten
    await round_.on_partitions_revoked({P, Q})  # commits P at 100 on the way out: right
    await round_.on_partitions_assigned({P, Q})  # both back, another member took them on
    round_.finished(Q, 7, fetched_in)  # the slow batch of Q ends the round
    await consumer_of("audit")._commit(client, round_)  # type: ignore[arg-type]
    assert client.commits == [{P: 100}]


async def test_a_batch_fetched_before_two_rebalances_is_not_committed_after_them() -> None:
    # A slow batch of P (100-149) outlasted the revoke listener's wait; P went to
    # another member, which took it to 400, and came back before the batch ended: its
    # offset 150, counted as done under the assignment it ended in, was committed and
    # moved the group back 250 records.
    client = RecordingConsumer({P})
    round_ = kafka._Round(client, "audit")  # type: ignore[arg-type]
    await round_.on_partitions_assigned({P})
    round_.begin()
    fetched_in = round_.forgotten
    for _ in range(2):
        await round_.on_partitions_revoked({P})  # nothing done yet: nothing to commit
        await round_.on_partitions_assigned({P})
    round_.finished(P, 150, fetched_in)
    assert round_.current() == {}
    await consumer_of("audit")._commit(client, round_)  # type: ignore[arg-type]
    assert client.commits == []


async def test_a_round_without_a_rebalance_commits_every_partition_it_did() -> None:
    client = RecordingConsumer({P, Q})
    round_ = await round_on(client)
    round_.finished(Q, 7, round_.forgotten)
    await consumer_of("audit")._commit(client, round_)  # type: ignore[arg-type]
    assert client.commits == [{P: 100, Q: 7}]


async def test_a_round_spanning_two_rebalances_commits_its_old_offset_only_once() -> None:
    # The second revocation of the round committed P at 100 again, over the offset the
    # member that held P between the two rebalances had committed.
    client = RecordingConsumer({P})
    round_ = await round_on(client)
    for _ in range(2):
        await round_.on_partitions_revoked({P})
        await round_.on_partitions_assigned({P})
    assert client.commits == [{P: 100}]
