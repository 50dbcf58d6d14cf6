"""A poison record the brokers took compressed, too large for its dead-letter copy to
be sent whole, is dead-lettered cut and passed: the group does not stall on it."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from agora import kafka
from agora.config import Settings
from tests.integration.consumerkit import read_all
from tests.integration.test_event_consumer import collecting, committed, consume, envelope

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# Not an envelope; 2 MiB uncompressed (over the producer's 1 MiB max_request_size a
# dead letter is sent with), a few KiB as a gzip batch (under the brokers' 1 MiB).
HUGE = b"not an envelope " * (2 * MiB // 16)


async def publish_compressed(settings: Settings, topic: str, values: list[bytes]) -> None:
    """`values` to one partition of `topic` as gzip batches, as another client may."""
    raw = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        compression_type="gzip",
        max_request_size=4 * MiB,
    )
    await raw.start()
    try:
        for value in values:
            await raw.send_and_wait(topic, value, key=b"one-partition")
    finally:
        await raw.stop()


@pytest.mark.parametrize("kind", ["handler", "batch_handler"])
async def test_a_compressed_poison_record_too_large_to_copy_whole_is_dead_lettered_cut(
    settings: Settings, kind: str
) -> None:
    topic = f"test-consumer-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    await publish_compressed(settings, topic, [HUGE, envelope("after")])
    handled, handler = collecting(kind)
    group = await consume(settings, topic, [], handler, lambda: handled == ["after"], kind=kind)

    assert handled == ["after"], "the consumer went on past the poison record"
    assert await committed(settings, group, topic) == 2
    [dead] = await read_all(settings, kafka.dlq_topic(topic), 1)
    headers = dict(dead.headers)
    assert dead.value == HUGE[: kafka.DLQ_TRUNCATED_BYTES]
    assert headers["dlq-truncated"] == b"true"
    assert headers["dlq-original-size"] == str(len(HUGE)).encode()
    assert headers["dlq-offset"] == b"0"
    assert headers["dlq-reason"].decode().startswith("undecodable envelope")
