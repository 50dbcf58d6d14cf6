"""The consumer's watchdog: the lag it reports and acts on is counted from what the
group committed, whichever member committed it; a stalled client it stops is closed."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from agora import kafka
from agora.config import Settings
from contracts.agora.events.v1 import EventEnvelope
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration


def envelope() -> bytes:
    return bytes(EventEnvelope(event_id=str(uuid.uuid4()), event_type="test.Thing"))


def clients_of(
    consumer: kafka.EventConsumer, monkeypatch: pytest.MonkeyPatch
) -> list[AIOKafkaConsumer]:
    """The clients `consumer`'s sessions make, in order, as they make them."""
    clients: list[AIOKafkaConsumer] = []
    new_client = consumer._new_consumer

    def counted() -> AIOKafkaConsumer:
        clients.append(new_client())
        return clients[-1]

    monkeypatch.setattr(consumer, "_new_consumer", counted)
    return clients


async def watched_topic(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, prefix: str, *, stall_s: float
) -> tuple[str, str, AIOKafkaProducer]:
    """A new topic, a new group and a started producer, with the lag watcher refreshing
    every 0.2 s and taking a session silent for `stall_s` for stalled."""
    monkeypatch.setattr(kafka, "LAG_REFRESH_S", 0.2)
    monkeypatch.setattr(kafka, "STALL_S", stall_s)
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = kafka.create_producer(settings, "test")
    await producer.start()
    return topic, f"group-{uuid.uuid4().hex[:8]}", producer


async def test_a_partition_back_from_another_member_has_the_lag_that_member_left(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KEDA scales out and back in: partitions move to a second member, which consumes
    # and commits them, and come back. The first member counted their lag from what it
    # knew before they left: a backlog that is gone, kept in the gauges (KEDA scales
    # out again) and, quiet for STALL_S, a healthy session restarted as stalled.
    topic, group, producer = await watched_topic(settings, monkeypatch, "test-lag", stall_s=2.0)

    async def handle(batch: object) -> None:
        pass

    first = kafka.EventConsumer(
        settings, kafka.ConsumerSpec(group=group, topics=[topic], batch_handler=handle), producer
    )
    clients = clients_of(first, monkeypatch)
    second = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )

    def lags() -> dict[int, int]:
        return {p: lag for (g, _, p), lag in kafka._lag.items() if g == group}

    def assigned(client: AIOKafkaConsumer) -> set[int]:
        return {tp.partition for tp in client.assignment()}

    task = asyncio.create_task(first.run())
    try:

        async def measured_everywhere() -> bool:
            return len(lags()) == kafka.PARTITIONS

        await eventually(measured_everywhere, within=60, what="the first member's lag")
        await second.start()

        async def split() -> bool:
            theirs = assigned(second)
            return bool(theirs) and assigned(clients[-1]) == set(range(kafka.PARTITIONS)) - theirs

        await eventually(split, within=60, what="the partitions shared by both members")
        theirs = assigned(second)
        for partition in theirs:
            for _ in range(3):
                await producer.send_and_wait(topic, envelope(), partition=partition)
        consumed = 0
        for _ in range(120):
            consumed += sum(len(b) for b in (await second.getmany(timeout_ms=500)).values())
            if consumed == 3 * len(theirs):
                break
        assert consumed == 3 * len(theirs)
        await second.commit()
        await second.stop()  # leaves the group: its partitions go back to the first member

        async def caught_up() -> bool:
            back = assigned(clients[-1]) == set(range(kafka.PARTITIONS))
            return back and lags() == dict.fromkeys(range(kafka.PARTITIONS), 0)

        await eventually(caught_up, within=60, what="no lag once the partitions are back")
        assert len(clients) == 1, "the first member's session was restarted"
    finally:
        first.stop()
        await asyncio.gather(task, return_exceptions=True)
        await second.stop()
        await producer.stop()


async def test_records_expired_before_the_group_read_them_are_not_owed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A group away longer than the topic's retention: its commit lies before the log's
    # start. The client resets to the end and, on a quiet partition, fetches and commits
    # nothing; owed the gone records, the session was restarted as stalled each minute.
    topic, group, producer = await watched_topic(settings, monkeypatch, "test-expired", stall_s=1.0)
    earlier = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    partition = TopicPartition(topic, 0)
    try:
        await earlier.start()
        await admin.start()
        earlier.assign([partition])
        for _ in range(3):
            await producer.send_and_wait(topic, envelope(), partition=0)
        await earlier.commit({partition: 1})  # read one, then away
        await admin.delete_records({partition: RecordsToDelete(before_offset=3)})
    except BaseException:
        await producer.stop()
        raise
    finally:
        await earlier.stop()
        await admin.close()

    async def handle(batch: object) -> None:
        pass

    consumer = kafka.EventConsumer(
        settings, kafka.ConsumerSpec(group=group, topics=[topic], batch_handler=handle), producer
    )
    clients = clients_of(consumer, monkeypatch)
    task = asyncio.create_task(consumer.run())
    try:

        async def measured() -> bool:
            return kafka._lag.get((group, topic, 0)) == 0

        await eventually(measured, within=60, what="no lag for the expired records")
        await asyncio.sleep(kafka.STALL_S + 5 * kafka.LAG_REFRESH_S)
        assert len(clients) == 1, "the session was restarted as stalled"
        assert kafka._lag.get((group, topic, 0)) == 0
    finally:
        consumer.stop()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()


async def test_a_stalled_client_whose_stop_hangs_is_closed_all_the_same(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stalled session's stop() waits on its coordinator, which waits on the silent
    # session: cut short, it left the fetcher, the heartbeat and the connections open,
    # and a second stop() returns at once (the client counts itself closed).
    monkeypatch.setattr(kafka, "STALL_STOP_S", 0.5)
    topic = f"test-stall-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])

    async def handle(batch: object) -> None:
        pass

    spec = kafka.ConsumerSpec(
        group=f"group-{uuid.uuid4().hex[:8]}", topics=[topic], batch_handler=handle
    )
    consumer = kafka.EventConsumer(settings, spec, producer=None)  # type: ignore[arg-type]
    client = consumer._new_consumer()
    client.subscribe([topic], listener=kafka._Round(client, spec.group))
    await client.start()
    try:

        async def joined() -> bool:
            return bool(client.assignment())

        await eventually(joined, within=60, what="the client's partitions")

        async def never_closes() -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(client._coordinator, "close", never_closes)
        await consumer._stop_stalled(client, silent_s=61)

        coordinator = client._coordinator
        assert coordinator._coordination_task.done() and coordinator._heartbeat_task is None
        assert client._fetcher._fetch_task.done(), "the fetcher still fetches"
        connected = [c for c in client._client._conns.values() if c.connected()]
        assert not connected, "connections to the brokers are still open"
    finally:
        await client.stop()


async def test_a_stalled_session_ends_with_its_client_closed_even_when_its_stop_hangs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole path, not `_stop_stalled` alone: the watcher's stop() marks the client
    # closed, so the session's fetch ends at once and its `finally` cancelled the
    # watcher inside that stop(); the clean-up of what stop() had left never ran, and
    # every stall restart left a client's fetcher, heartbeat and connections behind.
    monkeypatch.setattr(kafka, "LAG_REFRESH_S", 0.2)
    monkeypatch.setattr(kafka, "STALL_S", 1.0)
    monkeypatch.setattr(kafka, "STALL_STOP_S", 1.0)
    topic = f"test-stall-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = kafka.create_producer(settings, "test")
    await producer.start()
    seen: list[int] = []

    async def handle(batch: list[object]) -> None:
        seen.append(len(batch))

    spec = kafka.ConsumerSpec(
        group=f"group-{uuid.uuid4().hex[:8]}", topics=[topic], batch_handler=handle
    )
    consumer = kafka.EventConsumer(settings, spec, producer)
    clients = clients_of(consumer, monkeypatch)
    task = asyncio.create_task(consumer.run())
    try:

        async def assigned() -> bool:
            return bool(clients and clients[0].assignment())

        await eventually(assigned, within=60, what="the first session's partitions")
        silent = clients[0]

        async def never_closes() -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(silent._coordinator, "close", never_closes)
        silent.pause(*silent.assignment())  # silent, as after a broker restart
        await producer.send_and_wait(topic, envelope(), key=b"k")

        async def handled() -> bool:
            return sum(seen) == 1

        await eventually(handled, within=60, what="the record handled by a new session")
        assert len(clients) >= 2
        coordinator = silent._coordinator
        assert coordinator._coordination_task.done() and coordinator._heartbeat_task is None
        assert silent._fetcher._fetch_task.done(), "the stalled client still fetches"
        connected = [c for c in silent._client._conns.values() if c.connected()]
        assert not connected, "the stalled client's connections are still open"
    finally:
        consumer.stop()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
