"""Apache Kafka 4.x in KRaft mode: jars from Maven Central, started with its main class."""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path

from aiokafka.errors import KafkaError

from agora import kafka as agora_kafka
from agora.config import REPO_ROOT
from stack.base import ComponentError, Context, run_step, which
from stack.component import Component, render_template

VERSION = "4.4.0"
DEPLOY = REPO_ROOT / "deploy" / "kafka"
FETCH = REPO_ROOT / "deploy" / "local" / "fetch_jvm_components.sh"


def cluster_id() -> str:
    """A base64 UUID as `kafka-storage random-uuid` prints: like Kafka's own Uuid, never
    one that starts with "-" (the format tool's argument parser takes it for an option:
    one CI run in 64 failed on "-t: expected one argument")."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


class Kafka(Component):
    name = "kafka"
    ports = ("kafka", "kafka_controller")
    start_timeout = 90

    def home(self, ctx: Context) -> Path:
        return ctx.cache / "kafka" / VERSION

    def installed(self, ctx: Context) -> bool:
        return (self.home(ctx) / ".agora-complete").exists()

    def preflight(self, ctx: Context) -> None:
        if not self.installed(ctx):
            which(self.name, "mvn", hint="apt-get install maven")
        self._java()

    def install(self, ctx: Context) -> None:
        which(self.name, "mvn", hint="apt-get install maven")
        run_step(self.name, ["bash", FETCH, ctx.cache], ctx=ctx, env=_fetch_env("kafka"), tee=True)

    def _java(self) -> str:
        return which(self.name, "java", hint="apt-get install openjdk-17-jre-headless")

    def prepare(self, ctx: Context) -> None:
        root = ctx.data("kafka")
        data = root / "data"
        render_template(
            DEPLOY / "server.properties.tmpl",
            root / "server.properties",
            {
                "KAFKA_PORT": ctx.port("kafka"),
                "KAFKA_CONTROLLER_PORT": ctx.port("kafka_controller"),
                "KAFKA_DATA_DIR": data,
            },
        )
        if (data / "meta.properties").exists():
            return
        if data.exists() and any(data.iterdir()):
            raise ComponentError(
                self.name,
                f"{data} has files but no meta.properties (an interrupted format?)",
                hint=f"remove {data} and run again",
            )
        cluster_id_file = root / "cluster-id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(cluster_id())
        run_step(
            self.name,
            [
                self._java(),
                f"-Dlog4j2.configurationFile={DEPLOY / 'log4j2-tools.properties'}",
                "-cp",
                f"{self.home(ctx) / 'libs'}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id_file.read_text().strip(),
                "-c",
                root / "server.properties",
                "--standalone",
            ],
            ctx=ctx,
        )

    def start(self, ctx: Context) -> None:
        root = ctx.data("kafka")
        ctx.spawn(
            self.name,
            [
                self._java(),
                "-Xms512m",
                "-Xmx1g",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={DEPLOY / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={ctx.logs}",
                "-cp",
                f"{self.home(ctx) / 'libs'}/*",
                "kafka.Kafka",
                root / "server.properties",
            ],
        )

    def healthy(self, ctx: Context) -> bool:
        return asyncio.run(_produce_and_consume(ctx.settings.kafka_bootstrap))

    def after_healthy(self, ctx: Context) -> None:
        try:
            asyncio.run(agora_kafka.ensure_topics(ctx.settings.kafka_bootstrap))
        except KafkaError as error:  # a topic refused: one clear message, not a traceback
            raise ComponentError(
                self.name, f"event topics not created: {error}", hint="run the command again"
            ) from None

    def urls(self, ctx: Context) -> dict[str, str]:
        return {"kafka": ctx.settings.kafka_bootstrap}


def _fetch_env(only: str) -> dict[str, str]:
    """The fetch script's env: the version this module runs, whatever the shell exports."""
    import os

    return {**os.environ, "FETCH_ONLY": only, "KAFKA_VERSION": VERSION}


async def _produce_and_consume(bootstrap: str) -> bool:
    """Health is a real round trip: a message produced with acks=all and read back."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = "agora.health"
    await agora_kafka.ensure_topics(bootstrap, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=3000)
    await producer.start()
    try:
        token = uuid.uuid4().hex.encode()
        meta = await producer.send_and_wait(topic, token)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await consumer.start()
    try:
        partition = TopicPartition(topic, meta.partition)
        consumer.assign([partition])
        consumer.seek(partition, meta.offset)
        batch = await consumer.getmany(partition, timeout_ms=3000)
        return any(r.value == token for r in batch.get(partition, []))
    finally:
        await consumer.stop()
