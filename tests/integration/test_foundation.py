"""The foundation: every component of the local stack is real and wired as DESIGN §7 says.

The services' mTLS (who the gRPC ports accept and refuse) is proven for all seven
services in tests/integration/test_security_grpc.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch
from temporalio.client import Client
from temporalio.worker import Worker

from agora import db, kafka, outbox
from agora.config import Settings
from agora.outbox import OUTBOX_SCHEMA
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.identity.v1 import AccountRegistered
from tests.integration.auditkit import superuser
from tests.integration.shout import ShoutWorkflow, shout
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


# PostgreSQL -------------------------------------------------------------


async def test_service_role_queries_its_own_database(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.db_dsn("catalog"))
    try:
        assert await conn.fetchval("select current_user") == "catalog"
        assert await conn.fetchval("select current_database()") == "catalog"
        await conn.execute("create temp table t (x int)")
        await conn.execute("insert into t values (41)")
        assert await conn.fetchval("select x + 1 from t") == 42
    finally:
        await conn.close()


async def test_service_role_cannot_reach_another_services_database(settings: Settings) -> None:
    dsn = settings.db_dsn("catalog").rsplit("/", 1)[0] + "/payments"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
        await asyncpg.connect(dsn)


async def test_migrations_start_after_a_process_died_holding_the_lock(settings: Settings) -> None:
    # A process killed mid-start (OOM, SIGKILL, a failover) leaves yoyo's lock row
    # behind; the next starts must not wait for it and fail for good.
    await db.migrate(settings, "catalog")
    conn = await asyncpg.connect(settings.db_dsn("catalog"))
    try:
        await conn.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 1)")
        # Several processes of a service starting together all get through.
        assert await asyncio.gather(*(db.migrate(settings, "catalog") for _ in range(3))) == [
            0,
            0,
            0,
        ]
    finally:
        await conn.execute("DELETE FROM yoyo_lock")
        await conn.close()


async def test_migrations_start_after_a_process_died_inside_yoyos_first_upgrade(
    settings: Settings, tmp_path: Path
) -> None:
    # On a database's first start yoyo creates its own tables under its table lock;
    # a process killed there leaves the lock row, and yoyo's tables still to create.
    name = f"migrate_scratch_{uuid.uuid4().hex[:10]}"
    (tmp_path / "0001_probe.sql").write_text("CREATE TABLE probe (x int);\n")
    admin = await superuser(settings, "postgres")
    try:
        await admin.execute(f"CREATE DATABASE {name} OWNER catalog")
        dsn = settings.db_dsn("catalog").rsplit("/", 1)[0] + f"/{name}"
        leftover = await asyncpg.connect(dsn)
        try:
            await leftover.execute(
                "CREATE TABLE yoyo_lock (locked INT DEFAULT 1, ctime TIMESTAMP, pid INT NOT NULL,"
                " PRIMARY KEY (locked))"
            )
            await leftover.execute("INSERT INTO yoyo_lock VALUES (1, now(), 4242)")
            assert await asyncio.to_thread(db._migrate, dsn, tmp_path, threading.Event()) == 1
            assert await leftover.fetchval("SELECT count(*) FROM probe") == 0
        finally:
            await leftover.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_a_process_waiting_for_migrations_does_not_stall_an_index_built_concurrently(
    settings: Settings,
) -> None:
    # A migration that builds an index CONCURRENTLY (inventory's 0003) waits for every
    # older snapshot in the database to end. A second process of the service, waiting
    # for the migrations' lock meanwhile, must hold none, or each waits for the other.
    await db.migrate(settings, "catalog")
    # As in a first process: one connection holds the lock, idle; another builds.
    holder = await asyncpg.connect(settings.db_dsn("catalog"))
    builder = await asyncpg.connect(settings.db_dsn("catalog"), command_timeout=60)
    table = f"migration_probe_{uuid.uuid4().hex}"
    await builder.execute(f"CREATE TABLE {table} (x int)")
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", db.MIGRATION_LOCK)
        second = asyncio.create_task(db.migrate(settings, "catalog"))
        await eventually(
            lambda: _asks_for_the_migration_lock(holder), what="the second process asking"
        )
        await builder.execute("SET statement_timeout = '20s'")
        await builder.execute(f"CREATE INDEX CONCURRENTLY {table}_x ON {table} (x)")
        await holder.execute("SELECT pg_advisory_unlock($1)", db.MIGRATION_LOCK)
        assert await second == 0
    finally:
        await holder.close()  # its lock with it, so a failed run's second process ends
        await builder.execute(f"DROP TABLE IF EXISTS {table}")
        await builder.close()


async def _asks_for_the_migration_lock(conn: asyncpg.Connection) -> bool:
    """Whether another backend of this database has asked for an advisory lock."""
    return await conn.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND query ~ 'pg_(try_)?advisory_lock\\('"
    )


# Redis ------------------------------------------------------------------


async def test_redis_round_trip(settings: Settings) -> None:
    client = aioredis.from_url(settings.redis_url)
    key = f"test:{uuid.uuid4()}"
    try:
        await client.set(key, "value", ex=30)
        assert await client.get(key) == b"value"
        assert 0 < await client.ttl(key) <= 30
    finally:
        await client.delete(key)
        await client.aclose()


# Kafka ------------------------------------------------------------------


async def test_kafka_produce_consume_with_acks_all(settings: Settings) -> None:
    topic = f"test-roundtrip-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k") for i in range(5)]
    finally:
        await producer.stop()
    assert {m.partition for m in sent} == {sent[0].partition}  # one key, one partition
    assert [m.offset for m in sent] == list(range(sent[0].offset, sent[0].offset + 5))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, sent[0].partition)])
        batch = await consumer.getmany(timeout_ms=10_000)
        values = [r.value for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    assert values == [f"m{i}".encode() for i in range(5)]


async def test_platform_topics_exist_with_partitions_and_dead_letter_twins(
    settings: Settings,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        wanted = [t for topic in kafka.EVENT_TOPICS for t in (topic, kafka.dlq_topic(topic))]
        described = await admin.describe_topics(wanted)
    finally:
        await admin.close()
    partitions = {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}
    assert partitions == {topic: kafka.PARTITIONS for topic in wanted}


# Elasticsearch ------------------------------------------------------------


async def test_elasticsearch_index_then_search(settings: Settings) -> None:
    client = AsyncElasticsearch(settings.elasticsearch_url)
    index = f"test-{uuid.uuid4().hex[:8]}"
    try:
        await client.index(
            index=index, id="1", document={"title": "Blue running shoes"}, refresh=True
        )
        await client.index(index=index, id="2", document={"title": "Red kettle"}, refresh=True)
        found = await client.search(index=index, query={"match": {"title": "shoes"}})
        assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]
    finally:
        await client.indices.delete(index=index, ignore_unavailable=True)
        await client.close()


# Temporal -----------------------------------------------------------------


async def test_workflow_runs_on_a_worker_against_the_dev_server(settings: Settings) -> None:
    client = await Client.connect(settings.temporal_address)
    queue = f"test-{uuid.uuid4()}"
    async with Worker(client, task_queue=queue, workflows=[ShoutWorkflow], activities=[shout]):
        result = await client.execute_workflow(
            ShoutWorkflow.run, "agora", id=f"test-{uuid.uuid4()}", task_queue=queue
        )
    assert result == "AGORA"


# Telemetry ----------------------------------------------------------------


async def test_prometheus_scrapes_a_service_side_port(settings: Settings, identity_service) -> None:
    base = f"http://{settings.host}:{settings.ports['prometheus']}/api/v1/query?query="
    query = urllib.parse.quote('up{job="agora",service="identity"}')

    async def scraped() -> bool:
        result = await asyncio.to_thread(http_json, base + query)
        values = [sample["value"][1] for sample in result["data"]["result"]]
        return values == ["1"]

    await eventually(scraped, within=40, what="Prometheus to scrape identity")


async def test_collector_receives_a_span_and_forwards_it_to_jaeger(settings: Settings) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    service = f"probe-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
    )
    with provider.get_tracer("test").start_as_current_span("probe-span") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    url = f"http://{settings.host}:{settings.ports['jaeger_ui']}/api/traces/{trace_id}"

    async def in_jaeger() -> bool:
        try:
            body = await asyncio.to_thread(http_json, url)
        except OSError:
            return False
        spans = [s["operationName"] for t in body.get("data") or [] for s in t["spans"]]
        return spans == ["probe-span"]

    await eventually(in_jaeger, within=30, what="the span in Jaeger")


# Outbox -------------------------------------------------------------------


async def test_outbox_relay_delivers_every_event_once_in_effect_across_a_crash(
    settings: Settings,
) -> None:
    """SIGKILL the relay mid-stream and restart it: nothing lost, at most one batch twice."""
    schema = f"outbox_test_{uuid.uuid4().hex[:8]}"
    topic = f"outbox-test-{schema}"
    total, batch = 3000, 25
    await kafka.ensure_topics(settings.kafka_bootstrap, [topic])
    pool = await asyncpg.create_pool(
        settings.db_dsn("identity"), server_settings={"search_path": schema}
    )
    await pool.execute(f"CREATE SCHEMA {schema}")
    for statement in OUTBOX_SCHEMA:
        await pool.execute(statement)
    written: list[str] = []
    async with pool.acquire() as conn:
        for start in range(0, total, 500):
            async with conn.transaction():
                for i in range(start, start + 500):
                    envelope = await outbox.append(
                        conn,
                        producer="identity",
                        topic=topic,
                        aggregate_type="account",
                        aggregate_id=f"acct-{i % 10}",
                        payload=AccountRegistered(account_id=f"acct-{i % 10}", email=f"{i}@x"),
                    )
                    written.append(envelope.event_id)

    def start_relay() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("outbox_relay_proc.py")),
                schema,
                str(batch),
            ],
            # In pytest's process group (no session of its own): not recorded for
            # `stack down`, it must get the signals that stop pytest, or it outlives
            # a killed run and keeps retrying against the test ports.
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )

    async def sent() -> int:
        return await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")

    relay = start_relay()
    try:
        await eventually(
            lambda: _at_least(sent, total // 5), within=60, what="a fifth sent", interval=0.05
        )
        relay.kill()  # SIGKILL: no chance to finish the batch or mark it
        relay.wait()
        assert await sent() < total, "relay finished before the crash; nothing was tested"
        relay = start_relay()
        await eventually(lambda: _at_least(sent, total), within=60, what="every event sent")
    finally:
        relay.kill()
        relay.wait()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"test-{schema}",
        enable_auto_commit=False,
    )
    await consumer.start()
    delivered: list[EventEnvelope] = []
    try:
        deadline = time.monotonic() + 30
        while len({e.event_id for e in delivered}) < total and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                delivered.extend(EventEnvelope.parse(r.value) for r in records)
    finally:
        await consumer.stop()
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()

    ids = [e.event_id for e in delivered]
    assert set(ids) == set(written), "an event was lost"
    duplicates = len(ids) - len(set(ids))
    assert duplicates <= batch, f"{duplicates} re-published: more than the one batch in flight"
    # Per aggregate, first deliveries arrive in sequence order.
    seen: dict[str, int] = {}
    for envelope in delivered:
        if envelope.sequence > seen.get(envelope.aggregate_id, 0):
            assert envelope.sequence == seen.get(envelope.aggregate_id, 0) + 1
            seen[envelope.aggregate_id] = envelope.sequence


async def _at_least(check, value: int) -> bool:
    return await check() >= value
