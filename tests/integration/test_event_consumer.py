"""The consumer helper: commits after the effect, dead-letters poison, retries the transient."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry import trace

from agora import kafka
from agora.config import Settings
from agora.errors import PoisonMessage
from contracts.agora.events.v1 import EventEnvelope
from tests.integration.consumerkit import read_all
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration


def envelope(event_id: str, payload: bytes = b"") -> bytes:
    return bytes(EventEnvelope(event_id=event_id, event_type="test.Thing", payload=payload))


async def committed(settings: Settings, group: str, topic: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


def collecting(kind: str) -> tuple[list[str], Any]:
    """The event ids a consumer of `kind` (one by one, or a batch at a time) handled,
    and that handler."""
    handled: list[str] = []

    async def handle_one(env: EventEnvelope, record: object) -> None:
        handled.append(env.event_id)

    async def handle_batch(batch: list[tuple[EventEnvelope, object]]) -> None:
        handled.extend(env.event_id for env, _ in batch)

    return handled, handle_one if kind == "handler" else handle_batch


async def test_poison_goes_to_the_dead_letter_topic_with_its_reason_and_the_rest_flows(
    settings: Settings,
) -> None:
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    handled: list[str] = []
    attempts: dict[str, int] = {}

    async def handler(env: EventEnvelope, record) -> None:
        attempts[env.event_id] = attempts.get(env.event_id, 0) + 1
        if env.payload == b"reject":
            raise PoisonMessage("payload says reject")
        if env.payload == b"flaky" and attempts[env.event_id] < 3:
            raise ConnectionError("database briefly away")
        handled.append(env.event_id)

    values = [
        envelope("a"),
        b"\xff\x00 not protobuf",
        envelope("b", b"reject"),
        envelope("c", b"flaky"),
        # A well-formed envelope plus aggregate_id (field 4, a string) sent as a varint:
        # betterproto2 would hand the handler an int there.
        envelope("e") + b"\x20\x05",
        envelope("d"),
    ]
    group = await consume(
        settings, topic, values, handler, lambda: handled == ["a", "c", "d"], kind="handler"
    )

    assert handled == ["a", "c", "d"], "order kept, poison skipped, flaky retried"
    assert attempts["c"] == 3
    dead = await read_all(settings, kafka.dlq_topic(topic), 3)
    reasons = [dict(r.headers)["dlq-reason"].decode() for r in dead]
    assert len(dead) == 3
    # Garbage bytes either fail to parse or parse into an envelope with no id: both are poison.
    assert reasons[0].startswith(("undecodable envelope", "envelope has no event_id"))
    assert reasons[1] == "payload says reject"
    assert reasons[2].startswith("undecodable envelope: a field does not hold its declared type")
    assert all(dict(r.headers)["dlq-topic"].decode() == topic for r in dead)
    assert await committed(settings, group, topic) == 6


@pytest.mark.parametrize("kind", ["handler", "batch_handler"])
async def test_a_record_with_neither_key_nor_value_is_dead_lettered_and_the_rest_flows(
    settings: Settings, kind: str
) -> None:
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await raw.start()
    try:
        # aiokafka's send() refuses such a record, but a batch (or another client) does not.
        batch = raw.create_batch()
        batch.append(key=None, value=None, timestamp=None)
        await (await raw.send_batch(batch, topic, partition=0))
        await raw.send_and_wait(topic, envelope("after"), partition=0)
    finally:
        await raw.stop()
    handled, handler = collecting(kind)
    group = await consume(settings, topic, [], handler, lambda: handled == ["after"], kind=kind)

    assert handled == ["after"], "the consumer went on to the next record"
    [dead] = await read_all(settings, kafka.dlq_topic(topic), 1)
    headers = dict(dead.headers)
    assert dead.key is None and dead.value == b""
    assert headers["dlq-null-value"] == b"true"
    assert headers["dlq-reason"] == b"envelope has no event_id"
    assert await committed(settings, group, topic) == 2


@pytest.mark.parametrize("kind", ["handler", "batch_handler"])
async def test_offsets_are_not_committed_while_the_handler_keeps_failing(
    settings: Settings, kind: str
) -> None:
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = kafka.create_producer(settings, "test")
    await producer.start()
    calls = 0

    async def always_down(*_: object) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("store down")

    group = f"group-{uuid.uuid4().hex[:8]}"
    spec = kafka.ConsumerSpec(group=group, topics=[topic], **{kind: always_down})
    consumer = kafka.EventConsumer(settings, spec, producer)
    try:
        for name in ("x", "y"):
            await producer.send_and_wait(topic, envelope(name), key=b"k")
        task = asyncio.create_task(consumer.run())
        for _ in range(600):  # joining a group can take seconds on a busy machine
            if calls >= 3:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await producer.stop()
    assert calls >= 3
    assert await committed(settings, group, topic) <= 0, "committed past an unhandled record"


async def test_a_consumer_stuck_on_its_first_batch_reports_the_backlog_behind_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store is down: the first batch is retried for as long as it takes, so no
    # round ends. The lag must still show the records piling up behind it.
    monkeypatch.setattr(kafka, "LAG_REFRESH_S", 0.2)
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = kafka.create_producer(settings, "test")
    await producer.start()

    async def always_down(*_: object) -> None:
        raise ConnectionError("store down")

    group = f"group-{uuid.uuid4().hex[:8]}"
    spec = kafka.ConsumerSpec(group=group, topics=[topic], batch_handler=always_down)
    consumer = kafka.EventConsumer(settings, spec, producer)
    task = asyncio.create_task(consumer.run())
    try:
        for n in range(30):
            await producer.send_and_wait(topic, envelope(f"e{n}"), key=b"k")

        async def lag() -> int:
            return sum(v for (g, t, _), v in kafka._lag.items() if (g, t) == (group, topic))

        for _ in range(600):
            if await lag() >= 30:
                break
            await asyncio.sleep(0.1)
        assert await lag() == 30
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()


def sessions_up(group: str) -> list[int]:
    """What the agora_kafka_consumer_up gauge reports for `group` (one value, or none)."""
    observed = kafka._observe_sessions(None)  # type: ignore[arg-type]
    return [int(o.value) for o in observed if o.attributes == {"group": group}]


async def test_a_group_whose_sessions_cannot_start_reports_zero_consumers_up(
    settings: Settings,
) -> None:
    # Brokers it cannot reach (a closed port here; refused credentials elsewhere): the
    # consumer keeps retrying and has no partition, so it reports no lag at all. The
    # up gauge must say 0 for its group the whole time, for KafkaConsumerDown.
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    unreachable = dataclasses.replace(settings, kafka_bootstrap_override=closed)
    producer = kafka.create_producer(settings, "test")
    group = f"group-{uuid.uuid4().hex[:8]}"

    async def handle(*_: object) -> None:
        raise AssertionError("nothing can be consumed")

    spec = kafka.ConsumerSpec(group=group, topics=["orders.events"], batch_handler=handle)
    consumer = kafka.EventConsumer(unreachable, spec, producer)
    assert sessions_up(group) == [0]
    await producer.start()
    task = asyncio.create_task(consumer.run())
    try:
        seen: set[int] = set()
        for _ in range(30):  # 3 s of retries: several failed starts
            await asyncio.sleep(0.1)
            seen.update(sessions_up(group))
        assert not task.done(), "the consumer gave up instead of retrying"
        assert seen == {0}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()


async def test_a_consuming_session_counts_as_up_until_it_stops(settings: Settings) -> None:
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = kafka.create_producer(settings, "test")
    handled = asyncio.Event()

    async def handle(*_: object) -> None:
        handled.set()

    group = f"group-{uuid.uuid4().hex[:8]}"
    spec = kafka.ConsumerSpec(group=group, topics=[topic], batch_handler=handle)
    consumer = kafka.EventConsumer(settings, spec, producer)
    await producer.start()
    task = asyncio.create_task(consumer.run())
    try:
        await producer.send_and_wait(topic, envelope("e1"), key=b"k")
        await asyncio.wait_for(handled.wait(), 60)
        assert sessions_up(group) == [1]
        consumer.stop()
        await asyncio.wait_for(task, 30)
        assert sessions_up(group) == [0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()


async def test_the_handler_runs_in_the_producers_trace(settings: Settings) -> None:
    from opentelemetry.propagate import inject
    from opentelemetry.sdk.trace import TracerProvider

    from agora.telemetry import setup_telemetry

    setup_telemetry(settings, "consumer-test")
    tracer = trace.get_tracer("test")
    assert isinstance(trace.get_tracer_provider(), TracerProvider)
    with tracer.start_as_current_span("producer") as producer_span:
        carrier: dict[str, str] = {}
        inject(carrier)
        produced_trace = producer_span.get_span_context().trace_id
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    seen: list[tuple[int, int]] = []

    async def handler(env: EventEnvelope, record) -> None:
        context = trace.get_current_span().get_span_context()
        seen.append((context.trace_id, context.span_id))

    value = bytes(EventEnvelope(event_id="t1", traceparent=carrier["traceparent"]))
    await consume(settings, topic, [value], handler, lambda: bool(seen), kind="handler")
    assert len(seen) == 1
    trace_id, span_id = seen[0]
    assert trace_id == produced_trace
    assert span_id != producer_span.get_span_context().span_id  # its own consumer span


# Batch handlers -----------------------------------------------------------------


class Batches:
    """A batch handler that records what it was given and can be told to fail."""

    def __init__(self, *, outages: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.applied: list[str] = []
        self.outages = outages
        self.spans: list[object] = []
        self.partitions: list[set[int]] = []

    async def __call__(self, batch) -> None:
        ids = [env.event_id for env, _ in batch]
        self.calls.append(ids)
        self.partitions.append({record.partition for _, record in batch})
        self.spans.append(trace.get_current_span())
        if self.outages:
            self.outages -= 1
            raise ConnectionError("store down")
        if any(env.payload == b"reject" for env, _ in batch):
            raise PoisonMessage("payload says reject")
        self.applied.extend(ids)


async def consume(
    settings: Settings,
    topic: str,
    values: list[bytes],
    handler: Any,
    done,
    *,
    keys: list[bytes] | None = None,
    whole_round: bool = False,
    kind: str = "batch_handler",
) -> str:
    """Publish `values` (to one partition unless `keys` spread them), then consume them
    with `handler` (a `kind` of ConsumerSpec handler) until `done()`; returns the group.
    Published before the consumer starts, so one fetch round holds them all."""
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = kafka.create_producer(settings, "test")
    await producer.start()
    group = f"group-{uuid.uuid4().hex[:8]}"
    spec = kafka.ConsumerSpec(
        group=group, topics=[topic], whole_round=whole_round, **{kind: handler}
    )
    consumer = kafka.EventConsumer(settings, spec, producer)
    try:
        for n, value in enumerate(values):
            await producer.send_and_wait(topic, value, key=keys[n] if keys else b"one-partition")
        task = asyncio.create_task(consumer.run())
        for _ in range(600):
            if done():
                break
            await asyncio.sleep(0.1)
        consumer.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await producer.stop()
    return group


async def test_a_batch_handler_gets_a_partitions_records_in_one_call_in_offset_order(
    settings: Settings,
) -> None:
    from opentelemetry.propagate import inject
    from opentelemetry.sdk.trace import ReadableSpan

    from agora.telemetry import setup_telemetry

    setup_telemetry(settings, "consumer-test")
    tracer = trace.get_tracer("test")
    producers = []
    values = []
    for name in ("a", "b", "c", "d"):
        with tracer.start_as_current_span(f"produce {name}") as span:
            carrier: dict[str, str] = {}
            inject(carrier)
            producers.append(span.get_span_context())
        values.append(bytes(EventEnvelope(event_id=name, traceparent=carrier["traceparent"])))
    handler = Batches()
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    group = await consume(settings, topic, values, handler, lambda: len(handler.applied) == 4)

    assert handler.calls == [["a", "b", "c", "d"]]
    assert await committed(settings, group, topic) == 4
    # One consumer span for the batch: in the first event's trace, linked to every producer.
    [span] = handler.spans
    assert isinstance(span, ReadableSpan)
    assert span.context is not None and span.context.trace_id == producers[0].trace_id
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 4
    linked = {(link.context.trace_id, link.context.span_id) for link in span.links}
    assert linked == {(p.trace_id, p.span_id) for p in producers}


async def test_a_whole_round_batch_spans_partitions_keeping_each_partitions_order(
    settings: Settings,
) -> None:
    handler = Batches()
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    ids = [f"{key}-{n}" for n in range(3) for key in ("k1", "k2", "k3", "k4", "k5", "k6")]
    keys = [event_id.split("-")[0].encode() for event_id in ids]
    values = [envelope(event_id) for event_id in ids]
    group = await consume(
        settings,
        topic,
        values,
        handler,
        lambda: len(handler.applied) == 18,
        keys=keys,
        whole_round=True,
    )

    assert sorted(handler.applied) == sorted(ids)
    assert any(len(partitions) > 1 for partitions in handler.partitions)
    # A key's events share a partition, so they arrive in the order they were sent.
    for key in ("k1", "k2", "k3", "k4", "k5", "k6"):
        assert [i for i in handler.applied if i.startswith(f"{key}-")] == [
            f"{key}-{n}" for n in range(3)
        ]
    assert await committed(settings, group, topic) == 18


async def test_a_poison_record_in_a_batch_is_dead_lettered_alone_and_the_rest_applied(
    settings: Settings,
) -> None:
    handler = Batches()
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    values = [
        envelope("a"),
        b"\xff\x00 not protobuf",
        envelope("b", b"reject"),
        envelope("c"),
        envelope("d"),
    ]
    group = await consume(settings, topic, values, handler, lambda: len(handler.applied) == 3)

    # The undecodable record never reaches the handler; the poison makes the batch
    # come back one record at a time, and only that record is refused.
    assert handler.calls == [["a", "b", "c", "d"], ["a"], ["b"], ["c"], ["d"]]
    assert handler.applied == ["a", "c", "d"]
    dead = await read_all(settings, kafka.dlq_topic(topic), 2)
    reasons = [dict(r.headers)["dlq-reason"].decode() for r in dead]
    assert len(dead) == 2
    assert reasons[0].startswith(("undecodable envelope", "envelope has no event_id"))
    assert reasons[1] == "payload says reject"
    assert dead[1].value == envelope("b", b"reject")
    assert await committed(settings, group, topic) == 5


async def test_an_outage_retries_the_whole_batch_and_loses_nothing(settings: Settings) -> None:
    handler = Batches(outages=2)
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    values = [envelope(name) for name in ("a", "b", "c")]
    group = await consume(settings, topic, values, handler, lambda: len(handler.applied) == 3)

    assert handler.calls == [["a", "b", "c"]] * 3, "the same batch, again, until it took effect"
    assert handler.applied == ["a", "b", "c"]
    assert await committed(settings, group, topic) == 3


def test_a_spec_takes_exactly_one_kind_of_handler() -> None:
    async def one(env: EventEnvelope, record) -> None: ...

    async def many(batch) -> None: ...

    with pytest.raises(ValueError):
        kafka.ConsumerSpec(group="g", topics=["t"])
    with pytest.raises(ValueError):
        kafka.ConsumerSpec(group="g", topics=["t"], handler=one, batch_handler=many)


# Rebalances ---------------------------------------------------------------------


class Member:
    """One EventConsumer of a shared group, with what it applied and the Kafka
    consumers its sessions created (one per session: a restart makes a second)."""

    def __init__(self, settings: Settings, group: str, topic: str, producer: Any) -> None:
        self.applied: list[str] = []
        self.clients: list[AIOKafkaConsumer] = []
        spec = kafka.ConsumerSpec(group=group, topics=[topic], batch_handler=self.handle)
        self.consumer = kafka.EventConsumer(settings, spec, producer)
        new_client = self.consumer._new_consumer

        def counted() -> AIOKafkaConsumer:
            self.clients.append(new_client())
            return self.clients[-1]

        self.consumer._new_consumer = counted  # type: ignore[method-assign]
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.consumer.run())

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self.clients[-1].assignment()} if self.clients else set()

    async def handle(self, batch) -> None:
        self.applied.extend(env.event_id for env, _ in batch)


class HeldMember(Member):
    """A member whose handler, once it has applied batches of an even and an odd
    partition, holds the next batch until released: mid-round, with work done."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.before: list[str] = []  # applied before the hold
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, batch) -> None:
        parities = {int(event_id[1]) % 2 for event_id in self.before}
        if not self.held.is_set() and parities == {0, 1}:
            self.held.set()
            await self.release.wait()
        elif not self.held.is_set():
            self.before.extend(env.event_id for env, _ in batch)
        await super().handle(batch)


async def test_a_member_joining_mid_round_keeps_the_first_session_and_loses_nothing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # KEDA adds a process under load: the group rebalances while a member is in the
    # middle of a round, and partitions it had handled move to the newcomer. That
    # round's commit fails; the member must keep its session (a restart leaves and
    # rejoins the group: two more rebalances for every member) and lose nothing.
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = kafka.create_producer(settings, "test")
    await producer.start()
    group = f"group-{uuid.uuid4().hex[:8]}"
    first = HeldMember(settings, group, topic, producer)
    second = Member(settings, group, topic, producer)
    everything = {f"p{p}-{n}" for p in range(kafka.PARTITIONS) for n in range(5)}
    try:
        for event_id in sorted(everything):  # published first: one round holds them all
            await producer.send_and_wait(topic, envelope(event_id), partition=int(event_id[1]))
        first.start()
        await asyncio.wait_for(first.held.wait(), 60)
        assert await committed(settings, group, topic) <= 0, "what it applied is uncommitted"
        second.start()
        # The rebalance ends while the first member still holds its batch.
        for _ in range(600):
            if second.assigned() and first.assigned() == set(range(6)) - second.assigned():
                break
            await asyncio.sleep(0.1)
        assert second.assigned(), "the second member was given partitions"
        first.release.set()
        for _ in range(600):
            if await committed(settings, group, topic) == len(everything):
                break
            await asyncio.sleep(0.1)
        assert await committed(settings, group, topic) == len(everything)
    finally:
        for member in (first, second):
            member.consumer.stop()
        await asyncio.gather(*(m.task for m in (first, second) if m.task), return_exceptions=True)
        await producer.stop()

    assert set(first.applied) | set(second.applied) == everything, "no record lost"
    assert len(first.clients) == 1, "the first member's session was restarted"
    assert not [r for r in caplog.records if "consumer interrupted" in r.getMessage()]
    # Batches it had applied before the rebalance were committed on the way out of
    # their partitions, not delivered again to the member that took them over.
    assert not set(first.before) & set(second.applied)


async def test_a_session_owed_records_and_given_none_starts_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a session whose client went silent after a broker restart: its partition
    # paused, it fetches nothing while records wait. A new session must take them.
    monkeypatch.setattr(kafka, "LAG_REFRESH_S", 0.2)
    monkeypatch.setattr(kafka, "STALL_S", 1.0)
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = kafka.create_producer(settings, "test")
    await producer.start()
    seen, handle = collecting("batch")
    group = f"group-{uuid.uuid4().hex[:8]}"
    spec = kafka.ConsumerSpec(group=group, topics=[topic], batch_handler=handle)
    consumer = kafka.EventConsumer(settings, spec, producer)
    silenced: list[AIOKafkaConsumer] = []
    new_consumer = consumer._new_consumer

    def first_one_silent() -> AIOKafkaConsumer:
        client = new_consumer()
        if not silenced:
            silenced.append(client)  # paused below, once it has its partition
        return client

    monkeypatch.setattr(consumer, "_new_consumer", first_one_silent)
    task = asyncio.create_task(consumer.run())
    try:

        async def assigned() -> bool:
            return bool(silenced and silenced[0].assignment())

        await eventually(assigned, what="the first session's partitions")
        silenced[0].pause(*silenced[0].assignment())
        await producer.send_and_wait(topic, envelope("e1"), key=b"k")

        async def handled() -> bool:
            return seen == ["e1"]

        await eventually(handled, what="e1 handled by a new session")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
