"""The consumer of every platform topic: checks each envelope and appends it to the chain.

One consumer group (`audit`) reads all of `agora.kafka.EVENT_TOPICS`. The shared
EventConsumer commits offsets only after `handle` returned, i.e. after the append
committed, so a crash or an outage re-delivers and the event-id dedupe absorbs
it. A malformed envelope raises PoisonMessage: it goes to the DLQ with the
reason and is counted, and the chain is never touched by it.
"""

from __future__ import annotations

import logging

from aiokafka import ConsumerRecord
from opentelemetry import metrics

from agora.errors import PoisonMessage
from agora.kafka import EVENT_TOPICS, ConsumerSpec
from contracts.agora.events.v1 import EventEnvelope
from workers.audit.chain import ChainWriter, Incoming
from workers.audit.envelopes import MalformedEnvelope, check

log = logging.getLogger(__name__)
_meter = metrics.get_meter("agora.audit")
_rejected = _meter.create_counter(
    "agora_audit_rejected", description="malformed envelopes sent to the dead-letter topic"
)
_unknown_payload = _meter.create_counter(
    "agora_audit_unknown_payload_type",
    description="well-formed events recorded whose payload type this build does not know",
)

GROUP = "audit"


class AuditConsumer:
    def __init__(self, writer: ChainWriter):
        self._writer = writer

    async def handle(self, envelope: EventEnvelope, record: ConsumerRecord) -> None:
        try:
            checked = check(envelope)
        except MalformedEnvelope as error:
            _rejected.add(1, {"topic": record.topic})
            raise PoisonMessage(f"malformed event: {error}") from error
        if not checked.payload_known:
            _unknown_payload.add(1, {"payload_type": envelope.payload_type})
            log.warning(
                "recording an event of an unknown payload type",
                extra={"event_id": envelope.event_id, "payload_type": envelope.payload_type},
            )
        await self._writer.append([Incoming(checked, bytes(record.value), record.topic)])

    def spec(self) -> ConsumerSpec:
        return ConsumerSpec(group=GROUP, topics=EVENT_TOPICS, handler=self.handle)
