"""The relay's publish rounds: bounded by bytes, so a round's rows of a partition fill
one producer batch at most and every send of a round is queued at once (see
outbox.ROUND_BYTES for the reordering a second batch allowed)."""

from __future__ import annotations

import uuid
from typing import Any

from agora import config, kafka, outbox


def row(envelope_bytes: int, aggregate_id: str = "order-1") -> dict[str, Any]:
    return {
        "id": 1,
        "topic": "orders.events",
        "aggregate_id": aggregate_id,
        "event_id": uuid.uuid4(),
        "event_type": "orders.OrderPlaced",
        "envelope": bytes(envelope_bytes),
    }


async def test_a_round_of_one_partitions_rows_fits_one_batch_of_the_relays_producer() -> None:
    rows = [row(2048) for _ in range(500)]  # 1 MB: two producer batches before
    first = outbox.one_round(rows)  # type: ignore[arg-type]
    assert 1 < len(first) < len(rows)
    assert first == rows[: len(first)], "a round is the oldest rows, in order"
    # The batch of the producer the service gives its relay, built by aiokafka itself:
    # every row of the round goes in (append answers None once a batch is full).
    producer = kafka.create_producer(
        config.load({}), client_id="rounds", max_batch_size=outbox.ROUND_BYTES
    )
    batch = producer.create_batch()
    for taken in first:
        key, value, headers = outbox.kafka_record(taken)
        appended = batch.append(key=key, value=value, timestamp=None, headers=headers)
        assert appended is not None, f"row {first.index(taken)} did not fit the batch"
    # The longest such run: one row more would have been past the round's bytes.
    assert sum(outbox.record_bytes(r) for r in rows[: len(first) + 1]) > outbox.ROUND_BYTES


def test_a_row_larger_than_a_round_is_a_round_of_its_own() -> None:
    big, small = row(outbox.ROUND_BYTES + 1), row(10)
    assert outbox.one_round([big, small]) == [big]  # type: ignore[list-item]
    assert outbox.one_round([small, big]) == [small]  # type: ignore[list-item]
    assert outbox.one_round([]) == []
