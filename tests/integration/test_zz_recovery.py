"""Crash recovery of the local stack: `kill -9` any component, run `up` again, nothing lost.

Named to run last: it restarts shared components under the other tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from elasticsearch import AsyncElasticsearch
from temporalio.api.enums.v1 import PendingActivityState, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus

from activities.identity import TOPIC as IDENTITY_EVENTS
from activities.identity import AccountRef, RegisterAccountInput
from agora import kafka, temporal
from agora.config import Settings
from contracts.agora.events.v1 import EventEnvelope
from stack.base import Context
from tests.integration.conftest import ServiceProcess, tail
from tests.integration.holds import Hold, started_attempt
from tests.integration.shout import ShoutWorkflow
from tests.integration.waiting import eventually
from workflows.identity import TASK_QUEUE as IDENTITY_QUEUE
from workflows.identity import RegisterAccountWorkflow, register_workflow_id

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
    # On disk before the reply, for this write: with everysec Redis may hold back even the
    # AOF write for up to 2 s while a background fsync runs (a slow disk). The restarted
    # Redis starts from its own command line again.
    await cache.config_set("appendfsync", "always")
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


HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
CREATE_ACCOUNT = "identity.create_account"


async def topic_ends(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(kafka.PARTITIONS)]
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def published_since(
    settings: Settings, since: dict[TopicPartition, int]
) -> list[EventEnvelope]:
    """The events written to the partitions from the offsets `since` to their ends now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    records = []
    try:
        consumer.assign(list(since))
        ends = await consumer.end_offsets(list(since))
        for partition, offset in since.items():
            consumer.seek(partition, offset)
        for _ in range(60):
            positions = {p: await consumer.position(p) for p in since}
            if all(positions[p] >= ends[p] for p in since):
                break
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return [EventEnvelope.parse(r.value) for r in records]


async def readiness(settings: Settings) -> tuple[int, dict[str, Any]]:
    url = f"http://{settings.host}:{settings.side_port('identity')}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def polls(client: Client, pid: int) -> bool:
    """Whether the worker of process `pid` polls both of identity's task queues."""
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=IDENTITY_QUEUE),
                task_queue_type=kind,
            )
        )
        if not any(p.identity.startswith(f"{pid}@") for p in described.pollers):
            return False
    return True


def logged_since(path: Path, offset: int) -> list[dict[str, Any]]:
    """The JSON log lines written to `path` after byte `offset`."""
    with path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_a_service_stops_gracefully_on_sigterm(
    settings: Settings, identity_service: ServiceProcess
) -> None:
    """SIGTERM: readiness off, intake stopped, in-flight work finished, exit 0."""
    client = await temporal.connect(settings)
    assert identity_service.proc is not None
    # Not "pollers never came back" for a service that died in the kill test.
    assert identity_service.proc.poll() is None, tail(identity_service.log)
    pid = identity_service.proc.pid
    # The kill test before this one restarted Temporal under the running service, whose
    # pollers come back on their own back-off (seconds apart by then): the saga below
    # must not spend the in-flight wait on that.
    await eventually(
        lambda: polls(client, pid),
        within=60,
        what="identity's worker to poll its task queues again",
    )
    account_id, email = str(uuid.uuid4()), f"sigterm-{uuid.uuid4().hex[:10]}@example.com"
    ends = await topic_ends(settings, IDENTITY_EVENTS)
    # The account's row, not committed: the activity's INSERT waits for this transaction.
    hold = await Hold.statement(
        settings.db_dsn("identity"),
        "INSERT INTO accounts (account_id, email, password_hash) VALUES ($1, $2, $3)",
        uuid.UUID(account_id),
        email,
        HASH,
    )
    try:
        handle = await client.start_workflow(
            RegisterAccountWorkflow.run,
            RegisterAccountInput(account_id, email, "Stopped", HASH),
            id=register_workflow_id(email),
            task_queue=IDENTITY_QUEUE,
        )

        async def in_flight() -> bool:
            pending = (await handle.describe()).raw_description.pending_activities
            started = any(
                p.activity_type.name == CREATE_ACCOUNT
                and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                for p in pending
            )
            return started and await hold.blocked() > 0

        try:
            await eventually(in_flight, within=30, what=f"{CREATE_ACCOUNT} to run and wait")
        except AssertionError as err:  # the service's side of it, for whoever reads CI's log
            raise AssertionError(f"{err}\n{tail(identity_service.log)}") from None
        # Only this stop's lines: the log is appended to by every start of the service.
        offset = identity_service.log.stat().st_size
        os.killpg(identity_service.proc.pid, signal.SIGTERM)

        async def draining() -> bool:
            return await readiness(settings) == (503, {"status": "draining"})

        # Released within the activity's 10 s start-to-close timeout, well before the
        # worker's 20 s graceful shutdown gives up on it.
        await eventually(draining, within=10, what="identity's readiness to go off")
        await hold.release()
        code = await asyncio.to_thread(identity_service.proc.wait, 40)
        assert code == 0, tail(identity_service.log)

        # Done before the process left: the row committed, its event published.
        conn = await asyncpg.connect(settings.db_dsn("identity"))
        try:
            stored = await conn.fetchval(
                "SELECT email FROM accounts WHERE account_id = $1", uuid.UUID(account_id)
            )
        finally:
            await conn.close()
        assert stored == email
        published = await published_since(settings, ends)
        assert [e.event_type for e in published if e.aggregate_id == account_id] == [
            "identity.AccountRegistered"
        ]
        # In this stop's log: the held activity completed while the service drained.
        logged = logged_since(identity_service.log, offset)
        messages = [line["message"] for line in logged]
        completed = [
            i
            for i, line in enumerate(logged)
            if (line["message"], line.get("workflow_id")) == ("activity completed", handle.id)
        ]
        assert "component failed" not in messages, messages
        assert completed and "shutting down" in messages, messages
        assert messages.index("shutting down") < completed[0], messages
        assert messages[-1] == "stopped", messages
    finally:
        await hold.release()
        # Left as the session had it: identity running (this same process record).
        await asyncio.to_thread(identity_service.stop)
        await asyncio.to_thread(identity_service.start)

    # Finished by the restarted worker: the in-flight attempt was the only one.
    assert await asyncio.wait_for(handle.result(), 60) == AccountRef(account_id, created=True)
    history = await handle.fetch_history()
    assert started_attempt(history, CREATE_ACCOUNT) == 1
