"""Consumer lag in records (end offset minus committed offset), as an observable gauge.

The consumer itself cannot see end offsets per record, so a small background
task polls them with Kafka's admin API every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger(__name__)


class ConsumerLag:
    def __init__(
        self,
        connection: Mapping[str, Any],
        group: str,
        topics: Sequence[str],
        interval_s: float = 5,
    ):
        self.connection = connection  # agora.kafka.connection(settings)
        self.group = group
        self.topics = topics
        self.interval_s = interval_s
        self.lag: dict[str, int] = {}
        metrics.get_meter("agora.search").create_observable_gauge(
            "agora_search_consumer_lag_records",
            callbacks=[self._observe],
            description="records not yet consumed by the search indexer, per topic",
        )

    def _observe(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(v, {"topic": t, "group": self.group}) for t, v in self.lag.items()]

    async def measure(self) -> dict[str, int]:
        admin = AIOKafkaAdminClient(**self.connection)
        probe = AIOKafkaConsumer(**self.connection)
        await admin.start()
        await probe.start()
        try:
            committed = await admin.list_consumer_group_offsets(self.group)
            await probe.topics()  # loads partition metadata
            partitions = [
                TopicPartition(topic, p)
                for topic in self.topics
                for p in (probe.partitions_for_topic(topic) or set())
            ]
            ends = await probe.end_offsets(partitions)
            lag: dict[str, int] = {}
            for tp, end in ends.items():
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else 0
                lag[tp.topic] = lag.get(tp.topic, 0) + max(end - done, 0)
            return lag
        finally:
            await probe.stop()
            await admin.close()

    async def run(self) -> None:
        while True:
            try:
                self.lag = await self.measure()
            except Exception as error:  # a broker restart: try again next round
                log.warning("consumer lag not measured", extra={"error": repr(error)})
            await asyncio.sleep(self.interval_s)
