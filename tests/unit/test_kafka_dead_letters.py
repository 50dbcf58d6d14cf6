"""Dead letters: a record too large to copy whole is copied cut, or skipped, never
retried for ever; the dead-letter line sits in the event's trace."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from agora import config, kafka, process
from agora.errors import PoisonMessage
from agora.kafka import ConsumerSpec, Decoded, EventConsumer
from agora.logs import setup_logging
from contracts.agora.events.v1 import EventEnvelope

MAX_REQUEST_SIZE = 1024 * 1024  # aiokafka's default max_request_size
# Not an envelope, and more than a producer sends in one request: a gzip batch of it
# is a few KiB, which the brokers take.
HUGE = b"not an envelope " * (MAX_REQUEST_SIZE // 8)
TP = TopicPartition("t", 0)


def record(offset: int, value: bytes, key: bytes | None = b"k") -> ConsumerRecord:
    return ConsumerRecord("t", 0, offset, 0, 0, key, value, None, 0, len(value), [])


class SizeCheckingProducer:
    """Refuses a record over max_request_size before any I/O, as aiokafka's send()
    does (MessageSizeTooLargeError, not retriable); keeps the others it is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def send_and_wait(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > MAX_REQUEST_SIZE:
            raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized")
        self.sent.append((topic, value, dict(headers)))


class OneFetch:
    """The Kafka client of one session: a fetch of `records` from partition t/0, then
    empty fetches; the offsets it is asked to commit are kept."""

    def __init__(self, records: list[ConsumerRecord], commits: list[dict[TopicPartition, int]]):
        self.records = records
        self.commits = commits
        self.fetched = False

    def subscribe(self, topics: list[str], listener: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(self, **_: object) -> dict[TopicPartition, list[ConsumerRecord]]:
        await asyncio.sleep(0)
        if self.fetched:
            return {}
        self.fetched = True
        return {TP: self.records}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def highwater(self, partition: TopicPartition) -> int:
        return len(self.records)


def event_consumer(kind: str, handler: Any, producer: object) -> EventConsumer:
    spec = ConsumerSpec(group="g", topics=["t"], **{kind: handler})
    return EventConsumer(config.load({}), spec, producer)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["handler", "batch_handler"])
async def test_a_poison_record_too_large_to_dead_letter_whole_does_not_stall_the_group(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The brokers took it compressed; its DLQ copy, sent uncompressed, is over the
    # producer's limit. Raised as a broker error, it would end the session with
    # nothing committed, and the next session would meet it again, for ever.
    monkeypatch.setattr(process, "SESSION_RETRY_FIRST_S", 0.001)
    handled: list[str] = []

    async def handle_one(envelope: EventEnvelope, _: object) -> None:
        handled.append(envelope.event_id)

    async def handle_batch(batch: Sequence[Decoded]) -> None:
        handled.extend(envelope.event_id for envelope, _ in batch)

    producer = SizeCheckingProducer()
    events = event_consumer(kind, handle_one if kind == "handler" else handle_batch, producer)
    after = bytes(EventEnvelope(event_id="after", event_type="test.Thing"))
    commits: list[dict[TopicPartition, int]] = []
    sessions = 0

    def new_session_client() -> OneFetch:
        nonlocal sessions
        sessions += 1
        if sessions == 3:  # the record came back: enough to tell
            events.stop()
        return OneFetch([record(0, HUGE), record(1, after)], commits)

    events._new_consumer = new_session_client  # type: ignore[assignment,method-assign]
    run = asyncio.create_task(events.run())
    for _ in range(500):
        if commits or run.done():
            break
        await asyncio.sleep(0.01)
    events.stop()
    await asyncio.wait_for(run, 5)

    assert commits == [{TP: 2}], "committed past the record it could not copy whole"
    assert sessions == 1 and handled == ["after"]
    [(topic, value, headers)] = producer.sent
    assert topic == "t.dlq"
    assert value == HUGE[: kafka.DLQ_TRUNCATED_BYTES]
    assert headers["dlq-truncated"] == b"true"
    assert headers["dlq-original-size"] == str(len(HUGE)).encode()
    assert headers["dlq-offset"] == b"0" and headers["dlq-reason"]


async def test_a_dead_letter_too_large_even_cut_is_skipped_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The key alone is over the limit: no copy can be written. The record stays in
    # its topic; the log says where.
    producer = SizeCheckingProducer()
    events = event_consumer("batch_handler", lambda _: asyncio.sleep(0), producer)
    await events._dead_letter(record(7, b"x", key=HUGE), "undecodable envelope")
    assert producer.sent == []
    [skipped] = [
        r for r in caplog.records if r.getMessage() == "dead letter not written, record skipped"
    ]
    assert (skipped.topic, skipped.partition, skipped.offset) == ("t", 0, 7)  # type: ignore[attr-defined]


async def test_a_dead_letter_that_fits_is_copied_whole() -> None:
    producer = SizeCheckingProducer()
    events = event_consumer("batch_handler", lambda _: asyncio.sleep(0), producer)
    await events._dead_letter(record(3, b"\xff\x00 not protobuf"), "undecodable envelope")
    [(_, value, headers)] = producer.sent
    assert value == b"\xff\x00 not protobuf" and "dlq-truncated" not in headers


async def test_the_dead_letter_line_carries_the_trace_id_of_the_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    setup_logging("audit", "INFO")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    envelope = EventEnvelope(
        event_id="e-1",
        event_type="test.Thing",
        traceparent=f"00-{trace_id}-00f067aa0ba902b7-01",
    )

    async def refuse(_: Sequence[Decoded]) -> None:
        raise PoisonMessage("payload says reject")

    producer = SizeCheckingProducer()
    events = event_consumer("batch_handler", refuse, producer)
    assert await events._handle_records([record(0, bytes(envelope))]) == 1

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [dead] = [line for line in lines if line["message"] == "dead-lettered"]
    assert dead["trace_id"] == trace_id
    assert len(producer.sent) == 1


def traced(trace_id: int, sampled: bool) -> EventEnvelope:
    return EventEnvelope(
        event_id=f"e-{trace_id}", traceparent=f"00-{trace_id:032x}-{1:016x}-0{int(sampled)}"
    )


@pytest.mark.parametrize("sampled_at", [0, 1, 2])
def test_a_batch_span_continues_its_first_sampled_events_trace(
    sampled_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent decides under the parent-based sampler: a batch led by an unsampled
    # event (most, at a ratio of 0.1) recorded nothing for the sampled event behind it.
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(kafka, "_tracer", provider.get_tracer("test"))
    batch: list[Decoded] = [
        (traced(n + 1, sampled=n == sampled_at), record(n, b"x")) for n in range(3)
    ]

    async def handle(_: object) -> None:
        pass

    with event_consumer("batch_handler", handle, None)._span(batch):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.context is not None and span.context.trace_id == sampled_at + 1
    assert len(span.links) == 3
