"""Crash recovery of the local stack: `kill -9` any component, run `up` again, nothing lost.

Named to run last: it restarts shared components under the other tests.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from elasticsearch import AsyncElasticsearch
from temporalio.client import Client, WorkflowExecutionStatus

from agora import kafka
from agora.config import Settings
from stack.base import Context
from tests.integration.conftest import ServiceProcess
from tests.integration.shout import ShoutWorkflow

pytestmark = pytest.mark.integration


def stack(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "stack", *args], check=True, env={**os.environ}, timeout=300
    )


async def test_every_component_comes_back_after_kill_9_with_its_data(
    settings: Settings, stack_ctx: Context
) -> None:
    marker = uuid.uuid4().hex
    # Durable writes in each store before the crash.
    conn = await asyncpg.connect(settings.db_dsn("inventory"))
    await conn.execute("CREATE TABLE IF NOT EXISTS recovery_probe (marker text)")
    await conn.execute("INSERT INTO recovery_probe VALUES ($1)", marker)
    await conn.close()
    cache = aioredis.from_url(settings.redis_url)
    await cache.set(f"test:recovery:{marker}", "kept")
    await cache.aclose()
    topic = f"test-recovery-{marker[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    sent = await producer.send_and_wait(topic, marker.encode())
    await producer.stop()
    search = AsyncElasticsearch(settings.elasticsearch_url)
    await search.index(index="recovery-probe", id=marker, document={"m": marker}, refresh=True)
    await search.close()
    client = await Client.connect(settings.temporal_address)
    handle = await client.start_workflow(
        ShoutWorkflow.run, "x", id=f"recovery-{marker}", task_queue=f"nobody-{marker}"
    )
    await asyncio.sleep(1.2)  # Redis appendfsync everysec

    victims = ["postgres", "redis", "kafka", "elasticsearch", "temporal"]
    stack("kill", *victims)
    for name in victims:
        assert stack_ctx.running_pid(name) is None
    stack("up", *victims)

    conn = await asyncpg.connect(settings.db_dsn("inventory"))
    assert await conn.fetchval("SELECT count(*) FROM recovery_probe WHERE marker = $1", marker) == 1
    await conn.close()
    cache = aioredis.from_url(settings.redis_url)
    assert await cache.get(f"test:recovery:{marker}") == b"kept"
    await cache.aclose()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    partition = TopicPartition(topic, sent.partition)
    consumer.assign([partition])
    consumer.seek(partition, sent.offset)
    records = []
    for _ in range(6):  # a broker just restarted may take a while to serve the fetch
        records = (await consumer.getmany(partition, timeout_ms=5000)).get(partition, [])
        if records:
            break
    await consumer.stop()
    assert [r.value for r in records] == [marker.encode()]
    search = AsyncElasticsearch(settings.elasticsearch_url)
    assert (await search.get(index="recovery-probe", id=marker))["_source"] == {"m": marker}
    await search.close()
    client = await Client.connect(settings.temporal_address)
    described = await client.get_workflow_handle(handle.id).describe()
    assert described.status == WorkflowExecutionStatus.RUNNING
    await client.get_workflow_handle(handle.id).terminate("test done")


async def test_a_service_stops_gracefully_on_sigterm(identity_service: ServiceProcess) -> None:
    """SIGTERM: readiness off, intake stopped, in-flight work finished, exit 0."""
    assert identity_service.stop() == 0
    assert '"message": "stopped"' in identity_service.log.read_text()
    identity_service.start()  # leave the session fixture as it was
