"""The consumer of every platform topic: checks each envelope and appends it to the chain.

One consumer group (`audit`) reads all of `agora.kafka.EVENT_TOPICS`. Events
arrive a fetch round at a time (`whole_round`: every partition's records of one
fetch, each partition's in offset order) and the whole round is appended in one
`ChainWriter.append`, one transaction: the chain-head lock, the dedupe lookup and
the commit are paid once per round instead of once per event. The shared
EventConsumer commits offsets only after `handle_batch` returned, i.e. after the
append committed, so a crash or an outage re-delivers and the event-id dedupe
absorbs it.

A malformed envelope goes to the DLQ with the reason and is counted (a record
that is no envelope at all is dead-lettered by the shared consumer before it
gets here, and counted in agora_kafka_dead_lettered only), and the chain is
never touched by it: the batch handler raises PoisonMessage before
appending anything, the consumer then hands it the batch's events one at a
time, and only the malformed one is refused (and counted, once).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import metrics

from agora.errors import PoisonMessage
from agora.kafka import EVENT_TOPICS, ConsumerSpec, Decoded
from workers.audit.chain import ChainWriter, Incoming
from workers.audit.envelopes import check

_meter = metrics.get_meter("agora.audit")
_rejected = _meter.create_counter(
    "agora_audit_rejected", description="malformed envelopes sent to the dead-letter topic"
)

GROUP = "audit"
# Each fetch may wait this long to gather events, so a steady trickle costs fewer
# fetches, commits and transactions (agora.kafka.ConsumerSpec). Small beside DESIGN
# §9's commit-to-audit lag target (p95 <= 100 ms), which a 100 ms wait alone used up.
GATHER_MS = 20


class AuditConsumer:
    def __init__(self, writer: ChainWriter):
        self._writer = writer

    async def handle_batch(self, batch: Sequence[Decoded]) -> None:
        """Check every envelope, then append them all in one transaction, in offset order."""
        incoming: list[Incoming] = []
        for envelope, record in batch:
            try:
                checked = check(envelope, bytes(record.value))
            except Exception as error:  # MalformedEnvelope, or a value no check foresaw
                if len(batch) > 1:
                    # Let the consumer isolate it: the batch comes back one event at a
                    # time and this envelope alone is refused (and counted) below.
                    raise PoisonMessage(f"a malformed event in a batch: {error}") from error
                _rejected.add(1, {"topic": record.topic})
                raise PoisonMessage(f"malformed event: {error}") from error
            incoming.append(Incoming(checked, bytes(record.value), record.topic))
        # Events of an unknown payload type are counted by the append, once stored.
        await self._writer.append(incoming)

    def spec(self) -> ConsumerSpec:
        return ConsumerSpec(
            group=GROUP,
            topics=EVENT_TOPICS,
            batch_handler=self.handle_batch,
            gather_ms=GATHER_MS,
            # The chain records events in its own order (chain.py), so a whole fetch
            # round is one append: one transaction and one chain-head lock.
            whole_round=True,
        )
