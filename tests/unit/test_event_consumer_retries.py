"""The consumer's retry loop (transient errors retried, a cancel obeyed) and its lag gauge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from agora import config, kafka, outbox, process
from agora.errors import PoisonMessage
from agora.kafka import ConsumerSpec, Decoded, EventConsumer
from agora.outbox import OutboxRelay
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


class Assigned:
    """What `_record_lag` asks of the Kafka consumer: its partitions and their ends."""

    def __init__(self, ends: dict[TopicPartition, int]):
        self.ends = ends

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    def highwater(self, partition: TopicPartition) -> int:
        return self.ends[partition]


async def test_lag_of_a_partition_rebalanced_away_is_no_longer_reported() -> None:
    kept, lost = TopicPartition("t", 0), TopicPartition("t", 1)
    events = consumer(lambda _: asyncio.sleep(0))
    events._record_lag(Assigned({kept: 10, lost: 50}), {kept: 4, lost: 5})  # type: ignore[arg-type]
    assert kafka._lag[("g", "t", 0)] == 6 and kafka._lag[("g", "t", 1)] == 45
    # The rebalance moved partition 1 to another process, which reports it now.
    events._record_lag(Assigned({kept: 10}), {kept: 8, lost: 5})  # type: ignore[arg-type]
    assert {k: v for k, v in kafka._lag.items() if k[0] == "g"} == {("g", "t", 0): 2}
    events._forget_lag()  # the session ended
    assert not [k for k in kafka._lag if k[0] == "g"]


def retry_delays(caplog: pytest.LogCaptureFixture, what: str) -> list[object]:
    """The waits `agora.process.keep_running` logged before restarting `what`."""
    message = f"{what} interrupted, retrying"
    return [getattr(r, "retry_in_s", None) for r in caplog.records if r.getMessage() == message]


async def test_the_session_backoff_starts_over_after_a_session_that_consumed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A broker blip a week ago must not leave today's restart at the longest backoff.
    monkeypatch.setattr(process, "SESSION_RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(process, "SESSION_RETRY_MAX_S", 0.004)
    events = consumer(lambda _: asyncio.sleep(0))
    consumed = [False, False, False, False, True, False]  # per session, in turn

    async def failing_session() -> None:
        events._consumed = consumed.pop(0)
        if not consumed:
            events.stop()
        raise KafkaConnectionError("brokers away")

    events._session = failing_session  # type: ignore[method-assign]
    await events.run()
    assert retry_delays(caplog, "consumer") == [0.001, 0.002, 0.004, 0.004, 0.001, 0.002]


async def test_the_relay_backoff_starts_over_after_a_session_that_worked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The same rule for the outbox relay: a database blip a week ago must not leave
    # today's restart (and the events behind it) at the longest backoff. A session
    # that won the lock and published nothing (a row Kafka refuses) did not work.
    monkeypatch.setattr(process, "SESSION_RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(process, "SESSION_RETRY_MAX_S", 0.004)
    relay = OutboxRelay(None, None, "retries")  # type: ignore[arg-type]
    worked = [False, False, False, True, False]  # per session, in turn

    async def failing_session() -> None:
        relay._worked = worked.pop(0)
        if not worked:
            relay.stop()
        raise ConnectionResetError("the database restarted")

    relay._session = failing_session  # type: ignore[method-assign]
    await relay.run()
    assert retry_delays(caplog, "outbox relay") == [0.001, 0.002, 0.004, 0.001, 0.002]


class StubProducer:
    """What `_dead_letter` asks of a producer: started, stopped, how many records it
    sent; with `refuse`, it refuses every record with that error."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.refuse, self.sent, self.started, self.stopped = refuse, 0, False, False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send_and_wait(self, *_: object, **__: object) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.sent += 1


def dead_letterer(error: Exception) -> EventConsumer:
    spec = ConsumerSpec(group="g", topics=["t"], batch_handler=lambda _: asyncio.sleep(0))
    return EventConsumer(config.load({}), spec, producer=StubProducer(error))  # type: ignore[arg-type]


async def test_a_dead_letter_the_producer_itself_refuses_is_skipped_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Raised, it would end the consumer and its process, and again after a restart.
    record = ConsumerRecord("t", 0, 7, 0, 0, None, b"x", None, 0, 1, [])
    refusal = AssertionError("Need at least one: key or value")
    await dead_letterer(refusal)._dead_letter(record, "r")
    # Skipped, the record stays in its topic: the log says where, and why.
    [skipped] = [
        r for r in caplog.records if r.getMessage() == "dead letter not written, record skipped"
    ]
    assert (skipped.topic, skipped.partition, skipped.offset) == ("t", 0, 7)  # type: ignore[attr-defined]
    assert skipped.exc_info is not None and skipped.exc_info[1] is refusal


async def test_a_dead_letter_the_brokers_refuse_is_raised_for_the_session_to_retry() -> None:
    record = ConsumerRecord("t", 0, 7, 0, 0, None, b"x", None, 0, 1, [])
    with pytest.raises(KafkaConnectionError):
        await dead_letterer(KafkaConnectionError("brokers away"))._dead_letter(record, "r")


async def test_after_a_dead_letter_the_brokers_refused_the_next_goes_through_a_new_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An idempotent producer left with a sequence gap refuses every send for good: on
    # the service's one, the poison record came back to every new session for ever.
    made = [StubProducer(refuse=OutOfOrderSequenceNumber()), StubProducer()]
    created = list(made)
    monkeypatch.setattr(kafka, "create_producer", lambda *_, **__: created.pop(0))
    stuck = OutOfOrderSequenceNumber()
    letterer = dead_letterer(stuck)
    record = ConsumerRecord("t", 0, 7, 0, 0, None, b"x", None, 0, 1, [])
    with pytest.raises(OutOfOrderSequenceNumber):
        await letterer._dead_letter(record, "r")  # the service's producer
    with pytest.raises(OutOfOrderSequenceNumber):
        await letterer._dead_letter(record, "r")  # a new one, broken as well
    await letterer._dead_letter(record, "r")  # and another
    assert [p.started for p in made] == [True, True]
    assert made[0].stopped, "the replaced producer of its own is stopped"
    assert made[1].sent == 1 and not made[1].stopped

    async def no_session() -> None:
        letterer.stop()

    letterer._session = no_session  # type: ignore[method-assign]
    await letterer.run()
    assert made[1].stopped, "its own producer is stopped with the consumer"


async def test_dead_letters_stay_on_the_services_producer_while_it_writes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("a producer was made while the service's one works")

    monkeypatch.setattr(kafka, "create_producer", never)
    service = StubProducer()
    spec = ConsumerSpec(group="g", topics=["t"], batch_handler=lambda _: asyncio.sleep(0))
    letterer = EventConsumer(config.load({}), spec, producer=service)  # type: ignore[arg-type]
    record = ConsumerRecord("t", 0, 7, 0, 0, None, b"x", None, 0, 1, [])
    for _ in range(2):
        await letterer._dead_letter(record, "r")
    assert service.sent == 2


class SilentLockConnection:
    """The relay lock's connection after its flow was dropped silently: not closed as
    far as asyncpg knows, but no answer comes (the server has ended its backend and
    freed the lock, which another relay may hold now). As asyncpg's pool proxy, once
    terminated it is detached: even `is_closed()` raises."""

    def __init__(self) -> None:
        self.terminated = False

    def is_closed(self) -> bool:
        if self.terminated:
            raise asyncpg.InterfaceError("connection has been released back to the pool")
        return False

    async def fetchval(self, query: str, *_: object, timeout: float | None = None) -> object:  # noqa: ASYNC109 (asyncpg's signature)
        if "pg_try_advisory_lock" in query:
            return True  # the lock is won while the flow still carries
        await asyncio.wait_for(asyncio.Event().wait(), timeout)
        return None

    async def fetchrow(self, *_: object) -> None:
        return None  # no unsent row

    async def add_listener(self, *_: object) -> None:
        pass

    async def remove_listener(self, *_: object) -> None:
        raise AssertionError("nothing goes over a dropped connection")

    async def execute(self, *_: object) -> None:
        raise AssertionError("nothing goes over a dropped connection")

    def terminate(self) -> None:
        self.terminated = True


class BrokenLockConnection(SilentLockConnection):
    """A connection left mid-protocol by a server that went away (PostgreSQL killed):
    asyncpg answers the check with InternalClientError, not a connection error."""

    async def fetchval(self, query: str, *_: object, timeout: float | None = None) -> object:  # noqa: ASYNC109 (asyncpg's signature)
        if "pg_try_advisory_lock" in query:
            return True
        raise asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        )


class OneConnectionPool:
    def __init__(self, conn: SilentLockConnection) -> None:
        self.conn = conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[SilentLockConnection]:
        yield self.conn


@pytest.mark.parametrize(
    "connection", [SilentLockConnection, BrokenLockConnection], ids=["silent", "broken"]
)
async def test_a_relay_whose_lock_connection_stopped_answering_publishes_no_more(
    monkeypatch: pytest.MonkeyPatch, connection: type[SilentLockConnection]
) -> None:
    # Broken: the relay's error ended the process (exit 1) after a PostgreSQL restart,
    # where a session started again once the database was back.
    monkeypatch.setattr(outbox, "LOCK_CHECK_EVERY_S", 0.0)
    monkeypatch.setattr(outbox, "LOCK_CHECK_TIMEOUT_S", 0.05)
    lock_conn = connection()
    relay = OutboxRelay(OneConnectionPool(lock_conn), StubProducer, "silent")  # type: ignore[arg-type]
    published: list[int] = []

    async def publish_batch(_: object) -> int:
        published.append(1)
        return 0

    async def prune_sent() -> int:
        return 0

    relay.publish_batch = publish_batch  # type: ignore[method-assign]
    relay.prune_sent = prune_sent  # type: ignore[method-assign]
    # The session ends with the cause (a reset: retried), and sends nothing more over
    # the connection it dropped (an UNLISTEN or unlock would hang as the check did).
    with pytest.raises(outbox.LockConnectionSilent):
        await asyncio.wait_for(relay._session(), 10)
    assert published == []
    assert lock_conn.terminated
