"""Kafka: the idempotent producer and a consumer that commits only after its effect is durable.

Topics: `<service>.events` carry EventEnvelope protobufs keyed by aggregate id;
each has a `<topic>.dlq` twin for poison messages, with the reason in a header.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract
from opentelemetry.trace import Link, SpanKind
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_exponential,
)

from agora.config import Settings
from agora.errors import PoisonMessage
from contracts.agora.events.v1 import EventEnvelope

log = logging.getLogger(__name__)
_meter = metrics.get_meter("agora.kafka")
_tracer = trace.get_tracer("agora.kafka")
_consumed = _meter.create_counter("agora_kafka_consumed", description="records handled")
_dead = _meter.create_counter("agora_kafka_dead_lettered", description="records sent to a DLQ")
# Records behind the end of each assigned partition, as last seen by its consumer.
_lag: dict[tuple[str, str, int], int] = {}


def _observe_lag(_: CallbackOptions) -> Iterable[Observation]:
    for (group, topic, partition), lag in _lag.items():
        yield Observation(lag, {"group": group, "topic": topic, "partition": str(partition)})


_meter.create_observable_gauge(
    "agora_kafka_consumer_lag", [_observe_lag], description="records not yet consumed"
)

EVENT_TOPICS = (
    "identity.events",
    "catalog.events",
    "inventory.events",
    "orders.events",
    "payments.events",
)
PARTITIONS = 6


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


async def ensure_topics(bootstrap: str, topics: Sequence[str] = EVENT_TOPICS) -> None:
    """Create the event topics and their dead-letter twins if missing (idempotent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for topic in topics for t in (topic, dlq_topic(topic))]
        new = [
            NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)
            for name in wanted
            if name not in existing
        ]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


def create_producer(settings: Settings, client_id: str) -> AIOKafkaProducer:
    """Idempotent (acks=all, enable_idempotence): a retried send is written once, in order."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=10_000,
    )


Handler = Callable[[EventEnvelope, ConsumerRecord], Awaitable[None]]


@dataclass
class ConsumerSpec:
    """What a service consumes: the group, the topics and the handler of one envelope."""

    group: str
    topics: Sequence[str]
    handler: Handler


class EventConsumer:
    """Runs one ConsumerSpec.

    Offsets are committed only after the handler returned (its effect is durable),
    so a crash re-delivers; handlers dedupe by event id. A record that cannot be
    decoded, or whose handler raises PoisonMessage, goes to the topic's DLQ with
    the reason and is then committed. Any other error is retried with backoff
    without moving past the record, so an outage delays events but loses none.
    """

    def __init__(self, settings: Settings, spec: ConsumerSpec, producer: AIOKafkaProducer):
        self.spec = spec
        self._producer = producer
        self._settings = settings
        self._stopping = asyncio.Event()
        # Error counters exist at 0 from the start: a series that appears only with its
        # first dead letter hides that letter from increase() and from the dashboards.
        for topic in spec.topics:
            _dead.add(0, {"group": spec.group, "topic": topic})

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            *self.spec.topics,
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=self.spec.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )

    async def run(self) -> None:
        """Consume until stopped; a broker outage restarts the session after a backoff.

        Whatever was handled but not committed when a session broke is delivered
        again, which handlers absorb by deduplicating on the event id.
        """
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(KafkaError),
            before_sleep=lambda state: log.warning(
                "consumer interrupted, retrying",
                extra={
                    "group": self.spec.group,
                    "error": repr(state.outcome.exception() if state.outcome else None),
                },
            ),
        ):
            with attempt:
                await self._session()

    async def _session(self) -> None:
        consumer = self._new_consumer()
        positions: dict[TopicPartition, int] = {}
        await consumer.start()
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                for partition, records in batches.items():
                    for record in records:
                        await self._handle(record)
                        if self._stopping.is_set():
                            break
                    await consumer.commit({partition: record.offset + 1})
                    positions[partition] = record.offset + 1
                self._record_lag(consumer, positions)
        finally:
            await consumer.stop()

    def _record_lag(self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> None:
        for partition, position in positions.items():
            highwater = consumer.highwater(partition)
            if highwater is not None:
                key = (self.spec.group, partition.topic, partition.partition)
                _lag[key] = max(highwater - position, 0)

    def stop(self) -> None:
        self._stopping.set()

    async def _handle(self, record: ConsumerRecord) -> None:
        try:
            envelope = EventEnvelope.parse(record.value)
            if not envelope.event_id:
                raise PoisonMessage("envelope has no event_id")
        except PoisonMessage as error:
            await self._dead_letter(record, str(error))
            return
        except Exception as error:
            await self._dead_letter(record, f"undecodable envelope: {error}")
            return
        # The consumer span continues the producer's trace (the context that wrote the
        # event travels in the envelope) and links to it, per the messaging conventions.
        producer_context = extract(
            {"traceparent": envelope.traceparent, "tracestate": envelope.tracestate}
        )
        link = trace.get_current_span(producer_context).get_span_context()
        with _tracer.start_as_current_span(
            f"process {record.topic}",
            context=producer_context,
            kind=SpanKind.CONSUMER,
            links=[Link(link)] if link.is_valid else [],
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.consumer.group.name": self.spec.group,
                "messaging.message.id": envelope.event_id,
                "messaging.kafka.offset": record.offset,
            },
        ):
            await self._handle_with_retries(envelope, record)

    async def _handle_with_retries(self, envelope: EventEnvelope, record: ConsumerRecord) -> None:
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.1, max=5),
            retry=retry_if_not_exception_type(PoisonMessage),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "handler failed, retrying",
                extra={
                    "event_id": envelope.event_id,
                    "error": str(state.outcome.exception() if state.outcome else None),
                },
            ),
        ):
            with attempt:
                try:
                    await self.spec.handler(envelope, record)
                except PoisonMessage as error:
                    await self._dead_letter(record, str(error))
                    return
        _consumed.add(1, {"group": self.spec.group, "topic": record.topic})

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        log.error(
            "dead-lettered",
            extra={"topic": record.topic, "offset": record.offset, "reason": reason},
        )
        headers = [
            ("dlq-reason", reason.encode()[:1000]),
            ("dlq-topic", record.topic.encode()),
            ("dlq-partition", str(record.partition).encode()),
            ("dlq-offset", str(record.offset).encode()),
            ("dlq-group", self.spec.group.encode()),
        ]
        await self._producer.send_and_wait(
            dlq_topic(record.topic), record.value, key=record.key, headers=headers
        )
        _dead.add(1, {"group": self.spec.group, "topic": record.topic})
