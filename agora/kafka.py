"""Kafka: the idempotent producer and a consumer that commits only after its effect is durable.

Topics: `<service>.events` carry EventEnvelope protobufs keyed by aggregate id;
each has a `<topic>.dlq` twin for poison messages, with the reason in a header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import betterproto2
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract
from opentelemetry.trace import Link, SpanKind
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_exponential,
)

from agora import process
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
# How often a consumer also asks the brokers for its lag (besides after every round).
LAG_REFRESH_S = 15.0
# A session owed records (the brokers' end of an assigned partition beyond what it
# committed) that has had none delivered for this long, with no batch in hand, is
# stalled: once, after a broker restart under load, an aiokafka session went silent
# for good (no fetch, no heartbeat, never rejoined) while the process ran on. Its
# client is stopped and the session starts again with a new one.
STALL_S = 60.0
# How long a stalled session's client may take to stop.
STALL_STOP_S = 10.0


def _observe_lag(_: CallbackOptions) -> Iterable[Observation]:
    # Snapshots (here and below): the exporter's thread runs these callbacks while the
    # loop's thread adds and drops keys ("dictionary changed size during iteration").
    for (group, topic, partition), lag in list(_lag.items()):
        yield Observation(lag, {"group": group, "topic": topic, "partition": str(partition)})


_meter.create_observable_gauge(
    "agora_kafka_consumer_lag", [_observe_lag], description="records not yet consumed"
)

# Per consumer group, this process's sessions that are consuming (0 while one cannot
# start, or waits to start again after a broker error). A group whose sessions never
# start (the brokers refusing its credentials, say) reports no lag at all, so
# KafkaConsumerLagHigh stays silent; KafkaConsumerDown reads this instead.
_sessions: dict[str, int] = {}


def _observe_sessions(_: CallbackOptions) -> Iterable[Observation]:
    for group, running in list(_sessions.items()):
        yield Observation(running, {"group": group})


_meter.create_observable_gauge(
    "agora_kafka_consumer_up",
    [_observe_sessions],
    description="consumer sessions of the group that are consuming in this process",
)

EVENT_TOPICS = (
    "identity.events",
    "catalog.events",
    "inventory.events",
    "orders.events",
    "payments.events",
)
PARTITIONS = 6
GATHER_MIN_BYTES = 1 << 20
# How long a rebalance waits for the batch in hand before this member gives up its
# partitions. Well inside the broker's rebalance timeout (aiokafka: the session
# timeout, 10 s): a member not back by then is dropped, which is one more rebalance.
REVOKE_WAIT_S = 3.0
# How long the revoke listener tries to commit the round: aiokafka retries a commit's
# retriable errors without end, and the rejoin waits for the listener, so a broker
# coming back from a restart must not hold the member out of its group.
REVOKE_COMMIT_S = 5.0
# A dead letter too large to write whole (for the producer's max_request_size or the
# DLQ topic's limit, both 1 MiB by default) keeps this much of its value: a compressed
# record holds more than that uncompressed. Half, to leave room for key and headers.
DLQ_TRUNCATED_BYTES = 512 * 1024
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


def connection(settings: Settings) -> dict[str, Any]:
    """Where and how every Kafka client of a process connects: the bootstrap servers,
    and TLS verified against `kafka_ca_file` when the protocol is SSL."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap}
    if settings.kafka_security_protocol == "SSL":
        options["security_protocol"] = "SSL"
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ca_file or None)
    return options


M = TypeVar("M", bound=betterproto2.Message)


def parse_exact(cls: type[M], data: bytes) -> M:
    """`cls` parsed from `data`, refused unless every field holds its declared type.

    betterproto2 stores a field sent with another wire type as whatever it decoded
    (a varint where a string belongs becomes an int), and the error comes later,
    wherever the value is used: in a consumer, retried forever instead of
    dead-lettered. Such a message cannot be serialized back to itself; that check
    is the cheapest complete one (raises ValueError).
    """
    message = cls.parse(data)
    try:
        same = cls.parse(bytes(message)) == message
    except Exception as error:  # whatever the misplaced value made serialization raise
        raise ValueError(f"a field does not hold its declared type: {error}") from None
    if not same:
        raise ValueError("a field does not hold its declared type")
    return message


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def _written_in(envelope: EventEnvelope) -> Context:
    """The trace context that wrote `envelope`: it travels in the envelope."""
    return extract({"traceparent": envelope.traceparent, "tracestate": envelope.tracestate})


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
                answer = await admin.create_topics(new)
            except TopicAlreadyExistsError:
                return
            # The admin client raises for the request, never for a topic: each topic's
            # refusal (a timeout right after a restart, a topic still being deleted) is
            # in the answer, and a topic missing would fail its producers later
            # (auto-creation is off).
            refused = {
                topic: for_code(code).__name__
                for topic, code, *_ in answer.topic_errors
                if code not in (0, TopicAlreadyExistsError.errno)
            }
            if refused:
                raise KafkaError(f"topics not created: {refused}")
    finally:
        await admin.close()


def create_producer(
    settings: Settings, client_id: str, *, max_batch_size: int = 16384
) -> AIOKafkaProducer:
    """Idempotent (acks=all, enable_idempotence): a retried send is written once, in order.
    `max_batch_size`: bytes per partition batch (aiokafka's default; the outbox relay's
    producer takes outbox.ROUND_BYTES, see there)."""
    return AIOKafkaProducer(
        **connection(settings),
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=10_000,
        max_batch_size=max_batch_size,
    )


async def started_producer(settings: Settings, client_id: str) -> AIOKafkaProducer:
    """`create_producer`'s producer, started; one that fails to start is stopped (its
    client closed) before the error goes on."""
    producer = create_producer(settings, client_id)
    try:
        await producer.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await producer.stop()  # a failed start leaves its client to close
        raise
    return producer


Handler = Callable[[EventEnvelope, ConsumerRecord], Awaitable[None]]
Decoded = tuple[EventEnvelope, ConsumerRecord]
BatchHandler = Callable[[Sequence[Decoded]], Awaitable[None]]


@dataclass
class ConsumerSpec:
    """What a service consumes: the group, the topics and how it applies events.

    Exactly one of the two handlers. `handler` takes one envelope at a time.
    `batch_handler` takes the decoded records of one partition's fetch, in offset
    order, and applies them together (one transaction, one bulk request): at a
    steady trickle of events most of a consumer's cost is per call, not per event.
    It must be all-or-nothing from the consumer's point of view: either return
    once every record's effect is durable, or raise (a retry re-applies them all,
    so it must be idempotent per record like `handler`). Raising PoisonMessage
    makes the consumer apply the batch's records one at a time (one-item lists),
    so that only the poison record is dead-lettered.

    `gather_ms` lets the broker hold each fetch that long to gather records
    (instead of answering as soon as there is one): fewer fetches, commits and
    handler calls per event under a steady trickle, for up to that much delay,
    and a few more empty fetches when idle. 0 answers at once (latency-bound
    consumers, e.g. search's commit-to-searchable target).

    `whole_round` hands the batch handler every partition's records of a fetch
    round in one call (each partition's in offset order, partitions one after the
    other) instead of one call per partition. Only for a consumer whose effect does
    not depend on the order across partitions (audit's chain records its own order):
    at a steady trickle a partition's fetch holds about one event, a round several.
    """

    group: str
    topics: Sequence[str]
    handler: Handler | None = None
    batch_handler: BatchHandler | None = None
    gather_ms: int = 0
    whole_round: bool = False

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.batch_handler is None):
            raise ValueError("a ConsumerSpec takes exactly one of handler and batch_handler")


class EventConsumer:
    """Runs one ConsumerSpec.

    Offsets are committed only after the handler returned (its effect is durable),
    so a crash re-delivers; handlers dedupe by event id. A record that cannot be
    decoded, or whose handler raises PoisonMessage, goes to the topic's DLQ with
    the reason and is then committed. Any other error is retried with backoff
    without moving past the record (or the batch), so an outage delays events but
    loses none.
    """

    def __init__(self, settings: Settings, spec: ConsumerSpec, producer: AIOKafkaProducer):
        self.spec = spec
        # Dead letters go through the service's producer until one is refused by the
        # brokers; then through one of this consumer's own (`_renew_producer`).
        self._producer = producer
        self._own_producer: AIOKafkaProducer | None = None
        self._renew_producer = False
        self._settings = settings
        self._stopping = asyncio.Event()
        self._round: _Round | None = None  # the session's, while one runs
        self._consumed = False  # whether the current session has joined and consumed
        self._delivered_at = 0.0  # monotonic time of the session's last delivery
        self._stalled = ""  # why the current session was found stalled
        # Error counters exist at 0 from the start: a series that appears only with its
        # first dead letter hides that letter from increase() and from the dashboards.
        for topic in spec.topics:
            _dead.add(0, {"group": spec.group, "topic": topic})
        _sessions.setdefault(spec.group, 0)

    def _new_consumer(self) -> AIOKafkaConsumer:
        """A client for one session; the session subscribes it (with its listener)."""
        return AIOKafkaConsumer(
            **connection(self._settings),
            group_id=self.spec.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **(
                # A minimum no trickle reaches, so the wait is what ends each fetch.
                {"fetch_max_wait_ms": self.spec.gather_ms, "fetch_min_bytes": GATHER_MIN_BYTES}
                if self.spec.gather_ms
                else {}
            ),
        )

    async def run(self) -> None:
        """Consume until stopped; a broker outage restarts the session after a backoff.

        Whatever was handled but not committed when a session broke is delivered
        again, which handlers absorb by deduplicating on the event id. A rebalance is
        not an outage: the session rides it out (see `_commit`).
        """
        try:
            await process.keep_running(
                "consumer",
                self._session,
                transient=(KafkaError,),
                stopping=self._stopping,
                progressed=lambda: self._consumed,
                extra={"group": self.spec.group},
                logger=log,
            )
        finally:
            if self._own_producer is not None:
                await self._own_producer.stop()

    async def _session(self) -> None:
        self._consumed = False
        consumer = self._new_consumer()
        work = _Round(consumer, self.spec.group)
        consumer.subscribe(list(self.spec.topics), listener=work)
        try:
            await consumer.start()
        except BaseException:
            # Brokers unreachable: what start() opened is closed before the next try,
            # or each retry leaves a client (its connections and tasks) behind.
            await consumer.stop()
            raise
        self._delivered_at, self._stalled = time.monotonic(), ""
        watcher = asyncio.create_task(self._watch_lag(consumer, work))
        self._round = work
        try:
            while not self._stopping.is_set():
                batches = await self._fetch(consumer)
                fetched_in = work.forgotten
                if batches:
                    self._delivered_at = time.monotonic()
                if not self._consumed:  # a fetch answered: the session has joined its group
                    self._consumed = True
                    _sessions[self.spec.group] += 1
                work.begin()
                groups = list(batches.values())
                if self.spec.whole_round:
                    groups = [[record for records in groups for record in records]]
                for records in groups:
                    work.idle.clear()
                    try:
                        handled = await self._handle_records(records)
                        for record in records[:handled]:
                            tp = TopicPartition(record.topic, record.partition)
                            work.finished(tp, record.offset + 1, fetched_in)
                    finally:
                        work.idle.set()  # what the batch did is in `done` for the listener
                    if self._interrupted():
                        # Stopping, or a rebalance began: the rest of the round is
                        # delivered again, to this member or the partition's new owner.
                        break
                await self._commit(consumer, work)
                self._record_lag(consumer, work.positions)
        finally:
            self._round = None
            if self._consumed:
                _sessions[self.spec.group] -= 1
            if not self._stalled:
                watcher.cancel()
            # A stalled session's watcher is stopping its client (each of its steps
            # bounded by STALL_STOP_S): cancelled inside that stop(), it never closed
            # what the stop left open, and every stall restart leaked a client.
            await asyncio.gather(watcher, return_exceptions=True)
            self._forget_lag()  # a new session (or another process) reports from now on
            await consumer.stop()

    async def _commit(self, consumer: AIOKafkaConsumer, work: _Round) -> None:
        """One commit for the round (a commit is a broker write): every partition's
        batch in it is durable by now.

        A rebalance during the round (a member joined or left: KEDA scaling on lag
        does it under load) may have moved partitions away, or begun a generation the
        commit no longer belongs to. Then the round's offsets of those partitions are
        dropped: their records go again to whoever owns them now, from the last
        commit, and handlers dedupe them. The session goes on: ending it would leave
        and rejoin the group, two more rebalances for every member.
        """
        assigned = consumer.assignment()
        # Only what was done under the assignment it still holds: a partition given up
        # and given back during the round may have been taken further by the member
        # that had it meanwhile, and committing the offset done before would move the
        # group back (the revoke listener committed it, or its records go again).
        ours = {tp: offset for tp, offset in work.current().items() if tp in assigned}
        if not ours:
            return
        forgotten = work.forgotten
        try:
            await consumer.commit(ours)
        except (CommitFailedError, IllegalStateError) as error:
            log.info(
                "round not committed: the group rebalanced, its records are delivered again",
                extra={"group": self.spec.group, "error": repr(error)},
            )
            return
        if work.forgotten == forgotten:  # else a rebalance dropped them: read them again
            work.positions.update(ours)

    def _interrupted(self) -> bool:
        """The work in hand is the last of its round: stopping, or a rebalance began."""
        return self._stopping.is_set() or (self._round is not None and self._round.interrupted)

    async def _fetch(
        self, consumer: AIOKafkaConsumer
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """The next fetch round; a stalled session's (its client stopped by the lag
        watcher) ends the session as a broker error does, so it starts again."""
        try:
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
        except Exception as error:
            if self._stalled:
                raise ConsumerStalled(self._stalled) from error
            raise
        if self._stalled:
            raise ConsumerStalled(self._stalled)
        return batches

    async def _watch_lag(self, consumer: AIOKafkaConsumer, work: _Round) -> None:
        """Every LAG_REFRESH_S, the lag from the brokers' end offsets and what this
        group has committed. The loop records lag only after a round; a handler stuck
        retrying (its store down) holds the round, and the lag it left would stay small
        while the topic grows: KafkaConsumerLagHigh must see the backlog then. A session
        owed records and given none for STALL_S, no batch in hand, is stopped (STALL_S)."""
        while True:
            await asyncio.sleep(LAG_REFRESH_S)
            assigned = list(consumer.assignment())
            if not assigned:
                continue
            positions, forgotten = work.positions, work.forgotten
            try:
                ends = await consumer.end_offsets(assigned)
                # Owed is counted from the log's start where the group's commit lies
                # before it (records it never read, expired by retention): the client
                # resets past them, fetches nothing on a quiet partition, commits
                # nothing, and a session owed the gone records was restarted as
                # stalled every minute, rebalancing the whole group each time.
                starts = await consumer.beginning_offsets(assigned)
                for partition in assigned:
                    if partition not in positions:
                        committed = await consumer.committed(partition)
                        if committed is None:  # nothing yet: from the earliest record
                            committed = starts[partition]
                        # The round may have committed during the awaits: keep its. A
                        # rebalance may have made it stale: read it again next time.
                        if work.forgotten == forgotten:
                            positions.setdefault(partition, committed)
            except KafkaError:
                continue  # brokers unreachable: the session's own errors tell
            except Exception:
                log.warning("consumer lag not refreshed", exc_info=True)
                continue
            owed = False
            for partition, end in ends.items():
                if partition in positions and partition in consumer.assignment():
                    key = (self.spec.group, partition.topic, partition.partition)
                    read_from = max(positions[partition], starts.get(partition, 0))
                    _lag[key] = max(end - read_from, 0)
                    owed = owed or _lag[key] > 0
            silent_s = time.monotonic() - self._delivered_at
            if owed and work.idle.is_set() and silent_s > STALL_S:
                await self._stop_stalled(consumer, silent_s)
                return

    async def _stop_stalled(self, consumer: AIOKafkaConsumer, silent_s: float) -> None:
        self._stalled = f"owed records, none delivered for {silent_s:.0f} s"
        log.warning(
            "consumer session stalled; starting a new one",
            extra={"group": self.spec.group, "silent_s": round(silent_s)},
        )
        try:
            await asyncio.wait_for(consumer.stop(), STALL_STOP_S)
        except (Exception, asyncio.CancelledError) as error:
            # Cut short (waiting on the silent session, or the service stopping), stop()
            # left the client half open, and a later stop() returns at once: what it
            # left is closed here, then a cancel goes on.
            with contextlib.suppress(Exception):  # closing is all that is left to try
                await asyncio.wait_for(_close_left_open(consumer), STALL_STOP_S)
            if isinstance(error, asyncio.CancelledError):
                raise

    async def _handle_records(self, records: list[ConsumerRecord]) -> int:
        """Handle one batch (a partition's fetch, or a whole round); returns how many of
        its records, from the first, are done with (to commit).

        A stop request, or a rebalance beginning, ends the work after the record (or
        batch) in hand.
        """
        if self.spec.batch_handler is None:
            for done, record in enumerate(records, start=1):
                await self._handle(record)
                if self._interrupted():
                    return done
            return len(records)
        batch = [decoded for record in records if (decoded := await self._decode(record))]
        if not batch:
            return len(records)
        poison = await self._apply(batch, self.spec.batch_handler)
        if poison is None:
            return len(records)
        if len(batch) == 1:
            await self._dead_letter(batch[0][1], str(poison), batch[0][0])
            return len(records)
        # Somewhere in the batch is a record the handler cannot apply: apply them one
        # at a time so that only that one is dead-lettered and the others take effect.
        log.warning(
            "poison in a batch, applying its records one at a time",
            extra={"group": self.spec.group, "records": len(batch), "error": str(poison)},
        )
        for decoded in batch:
            error = await self._apply([decoded], self.spec.batch_handler)
            if error is not None:
                await self._dead_letter(decoded[1], str(error), decoded[0])
            if self._interrupted():
                return records.index(decoded[1]) + 1
        return len(records)

    def _record_lag(self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> None:
        # A partition rebalanced to another process is reported by that process now:
        # a value left here would keep a lag that is gone in the gauges and the scaler.
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        self._forget_lag(keep=assigned)
        for partition, position in positions.items():
            if (partition.topic, partition.partition) not in assigned:
                continue
            highwater = consumer.highwater(partition)
            if highwater is not None:
                key = (self.spec.group, partition.topic, partition.partition)
                _lag[key] = max(highwater - position, 0)

    def _forget_lag(self, keep: Collection[tuple[str, int]] = ()) -> None:
        """Drop this group's lag of partitions other than `keep` (no longer ours)."""
        for key in [k for k in _lag if k[0] == self.spec.group and k[1:] not in keep]:
            del _lag[key]

    def stop(self) -> None:
        self._stopping.set()

    async def _handle(self, record: ConsumerRecord) -> None:
        """The per-record path: decode, apply in the record's own span, dead-letter poison."""
        decoded = await self._decode(record)
        if decoded is None:
            return
        handler = self.spec.handler
        assert handler is not None, "the per-record path needs a handler"

        async def one(batch: Sequence[Decoded]) -> None:
            await handler(*batch[0])

        poison = await self._apply([decoded], one)
        if poison is not None:
            await self._dead_letter(record, str(poison), decoded[0])

    async def _decode(self, record: ConsumerRecord) -> Decoded | None:
        """The record's envelope; None when it is undecodable (then it was dead-lettered)."""
        try:
            envelope = parse_exact(EventEnvelope, record.value)
            if not envelope.event_id:
                raise PoisonMessage("envelope has no event_id")
        except PoisonMessage as error:
            await self._dead_letter(record, str(error))
            return None
        except Exception as error:
            await self._dead_letter(record, f"undecodable envelope: {error}")
            return None
        return envelope, record

    async def _apply(self, batch: Sequence[Decoded], apply: BatchHandler) -> PoisonMessage | None:
        """Apply `batch` (one partition's records) in one consumer span, retrying
        transient errors with backoff; returns the PoisonMessage if one was raised."""
        with self._span(batch):
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=0.1, max=5),
                # Exceptions only: a cancel (shutdown) must end the loop, not be retried.
                retry=retry_if_exception_type(Exception)
                & retry_if_not_exception_type(PoisonMessage),
                reraise=True,
                before_sleep=lambda state: log.warning(
                    "handler failed, retrying",
                    extra={
                        "event_id": batch[0][0].event_id,
                        "records": len(batch),
                        "error": str(state.outcome.exception() if state.outcome else None),
                    },
                ),
            ):
                with attempt:
                    try:
                        await apply(batch)
                    except PoisonMessage as error:
                        return error
        for topic, count in Counter(record.topic for _, record in batch).items():
            _consumed.add(count, {"group": self.spec.group, "topic": topic})
        return None

    def _span(self, batch: Sequence[Decoded]) -> AbstractContextManager[trace.Span]:
        """One consumer span for the batch, per the messaging conventions.

        It continues the trace of the batch's first sampled event (the context that
        wrote an event travels in its envelope), so a one-event batch sits in its
        producer's trace exactly as a per-record span would, and it links to every
        event's producer context, which is how the other events' traces find it.
        The first sampled one, not the first: with the parent-based sampler the
        parent decides, and a batch led by an unsampled event (most of them, at a
        ratio of 0.1) recorded no span for the sampled events behind it.
        """
        contexts = [_written_in(envelope) for envelope, _ in batch]
        written = [trace.get_current_span(c).get_span_context() for c in contexts]
        parent = next(
            (
                c
                for c, sc in zip(contexts, written, strict=True)
                if sc.is_valid and sc.trace_flags.sampled
            ),
            contexts[0],
        )
        links: dict[tuple[int, int], Link] = {}
        for span_context in written:
            if span_context.is_valid:
                links.setdefault((span_context.trace_id, span_context.span_id), Link(span_context))
        first_envelope, first = batch[0]
        topics = sorted({record.topic for _, record in batch})
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.consumer.group.name": self.spec.group,
        }
        if len(topics) == 1:  # a whole round's batch may span topics: then none is named
            attributes["messaging.destination.name"] = first.topic
        if len(batch) == 1:
            attributes["messaging.message.id"] = first_envelope.event_id
            attributes["messaging.kafka.offset"] = first.offset
        else:
            # The conventions keep the count for batches and per-message ids for single messages.
            attributes["messaging.batch.message_count"] = len(batch)
        return _tracer.start_as_current_span(
            f"process {' '.join(topics)}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=list(links.values()),
            attributes=attributes,
        )

    async def _dead_letter(
        self, record: ConsumerRecord, reason: str, envelope: EventEnvelope | None = None
    ) -> None:
        """Copy `record` to its topic's DLQ, for the caller to commit past it.

        A copy refused for what it is, not for the brokers being away, is skipped
        (logged with where the record lies; its topic keeps it): raised, it would end
        the session, and again on the same record after every restart.
        """
        # In the event's trace when its envelope could be read: the consumer span has
        # ended, and the line belongs beside the producer's and the handler's.
        span = trace.get_current_span(_written_in(envelope) if envelope else None)
        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        with trace.use_span(span, end_on_exit=False):
            log.error("dead-lettered", extra={**where, "reason": reason})
            try:
                if self._renew_producer:
                    await self._new_dead_letter_producer()
                await self._write_dead_letter(record, reason)
            except Exception as error:
                if isinstance(error, KafkaError) and not isinstance(error, _TOO_LARGE):
                    # Brokers away: a new session gets the record again, and its dead
                    # letter goes through a new producer (see `_new_dead_letter_producer`).
                    self._renew_producer = True
                    raise
                log.exception("dead letter not written, record skipped", extra=where)
                return
        _dead.add(1, {"group": self.spec.group, "topic": record.topic})

    async def _new_dead_letter_producer(self) -> None:
        """A producer of this consumer's own for its dead letters, replacing the last.

        As the outbox relay's sessions: an idempotent producer left with a sequence
        gap refuses every send for good (OutOfOrderSequenceNumber), and only a new one
        recovers. Kept on the service's, the poison record would come back to every
        new session and stop its partition for ever."""
        fresh = await started_producer(self._settings, client_id=f"{self.spec.group}-dlq")
        old, self._own_producer = self._own_producer, fresh
        self._producer, self._renew_producer = fresh, False
        if old is not None:
            with contextlib.suppress(Exception):  # a broken producer's stop may fail too
                await old.stop()

    async def _write_dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        """The DLQ copy of `record`: whole, or its value cut to DLQ_TRUNCATED_BYTES
        (with a `dlq-truncated` header and its full size) when whole is too large."""
        headers = [
            ("dlq-reason", reason.encode()[:1000]),
            ("dlq-topic", record.topic.encode()),
            ("dlq-partition", str(record.partition).encode()),
            ("dlq-offset", str(record.offset).encode()),
            ("dlq-group", self.spec.group.encode()),
        ]
        if record.value is None:
            # The producer refuses a record with neither key nor value.
            headers.append(("dlq-null-value", b"true"))
        value = record.value or b""
        topic = dlq_topic(record.topic)
        try:
            await self._producer.send_and_wait(topic, value, key=record.key, headers=headers)
        except _TOO_LARGE:
            if len(value) <= DLQ_TRUNCATED_BYTES:
                raise  # its key or headers are what is too large
            headers += [("dlq-truncated", b"true"), ("dlq-original-size", str(len(value)).encode())]
            cut = value[:DLQ_TRUNCATED_BYTES]
            await self._producer.send_and_wait(topic, cut, key=record.key, headers=headers)


async def _close_left_open(consumer: AIOKafkaConsumer) -> None:
    """Close what AIOKafkaConsumer.stop() closes (aiokafka 0.14's parts), as far as a stop
    cut short left it open, without asking the brokers anything (no LeaveGroup: the
    group drops the silent member at its session timeout)."""
    coordinator = consumer._coordinator
    if coordinator is not None:
        coordinator._coordination_task.cancel()
        await asyncio.wait([coordinator._coordination_task])
        await coordinator._stop_heartbeat_task()
        await coordinator._stop_commit_offsets_refresh_task()
    if consumer._fetcher is not None:
        await consumer._fetcher.close()
    await consumer._client.close()


class ConsumerStalled(KafkaError):
    """A session owed records got none for STALL_S: it starts again (a broker error)."""

    retriable = True


class _Round(ConsumerRebalanceListener):
    """The fetch round a session is working through, and the session's part in a
    rebalance (aiokafka rebalances in the background, while handlers run).

    When a rebalance begins, the round ends after the batch in hand (`interrupted`),
    and what the round has done is committed before its partitions are given up,
    so their next owner starts after it instead of applying it again.
    """

    def __init__(self, consumer: AIOKafkaConsumer, group: str) -> None:
        self._consumer = consumer
        self._group = group
        self.done: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self.done_in: dict[TopicPartition, int] = {}  # the assignment (`forgotten`) of each
        self.idle = asyncio.Event()  # no batch in hand
        self.idle.set()
        self._revocations = 0
        self._at_start = 0
        # The committed offset of each assigned partition as this session knows it (its
        # lag is counted from it), forgotten at each assignment: `forgotten` counts them,
        # so that what was read before one is not kept after it.
        self.positions: dict[TopicPartition, int] = {}
        self.forgotten = 0

    def begin(self) -> None:
        self.done, self.done_in = {}, {}
        self._at_start = self._revocations

    def finished(self, tp: TopicPartition, offset: int, fetched_in: int) -> None:
        """`tp`'s records before `offset` are done with, under the assignment they were
        fetched in (`forgotten` then): a batch fetched before a partition was given up
        and given back, finished after, is not the current assignment's (counted as
        done under the assignment it ended in, it was committed over the further
        offset the partition's owner meanwhile had committed, moving the group back)."""
        self.done[tp] = offset
        self.done_in[tp] = fetched_in

    def current(self) -> dict[TopicPartition, int]:
        """What the round did under the current assignment: the rest belongs to one
        given up since, and its revocation committed it (or its records go again)."""
        return {
            tp: offset
            for tp, offset in self.done.items()
            if self.done_in.get(tp, self.forgotten) == self.forgotten
        }

    @property
    def interrupted(self) -> bool:
        return self._revocations != self._at_start

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        if not revoked:  # the first join: nothing was ours
            return
        self._revocations += 1
        try:
            await asyncio.wait_for(self.idle.wait(), REVOKE_WAIT_S)
        except TimeoutError:
            # Its records go to their new owner, from the last commit: applied twice.
            log.info("rebalancing with a batch in hand", extra={"group": self._group})
        # Not what an earlier assignment's revocation committed already (a round
        # that spans two rebalances): the partition's owner since may be further on.
        offsets = {tp: offset for tp, offset in self.current().items() if tp in revoked}
        if not offsets:
            return
        try:
            await asyncio.wait_for(self._consumer.commit(offsets), REVOKE_COMMIT_S)
        except (KafkaError, TimeoutError) as error:
            log.info(
                "round not committed before a rebalance, its records are delivered again",
                extra={"group": self._group, "error": repr(error)},
            )

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        # Rebalances are eager (every member gives up all its partitions): another
        # member may have committed further on any of them before this assignment.
        self.positions.clear()
        self.forgotten += 1
