"""Helpers for calling a service's batch handler in-process, as agora.kafka would.

Not a test module (its name does not start with test_). The records are what the
consumer hands a batch handler: decoded envelopes with the Kafka record they came in.
"""

from __future__ import annotations

from aiokafka import ConsumerRecord

from agora.kafka import Decoded
from contracts.agora.events.v1 import EventEnvelope


def decoded(topic: str, *envelopes: EventEnvelope, first_offset: int = 0) -> list[Decoded]:
    """One partition's batch: the envelopes at consecutive offsets of `topic`."""
    batch: list[Decoded] = []
    for offset, envelope in enumerate(envelopes, start=first_offset):
        value = bytes(envelope)
        record = ConsumerRecord(
            topic=topic,
            partition=0,
            offset=offset,
            timestamp=0,
            timestamp_type=0,
            key=envelope.aggregate_id.encode(),
            value=value,
            checksum=None,
            serialized_key_size=len(envelope.aggregate_id),
            serialized_value_size=len(value),
            headers=(),
        )
        batch.append((envelope, record))
    return batch
