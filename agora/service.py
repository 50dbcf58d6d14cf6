"""One service process: Temporal worker + gRPC server + consumers + outbox relay + side port.

`workers/<service>.py` describes what the service has (a `ServiceDefinition`);
`run_service` wires it to the shared runtime and runs it until SIGTERM, then
shuts down in order: stop taking work, finish in-flight activities, flush the
outbox and telemetry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from grpclib._typing import IServable
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker

from agora import db, grpc, kafka, outbox, pki, process, rollover, temporal
from agora.config import Settings
from agora.outbox import OutboxRelay
from agora.process import STARTUP_PATIENCE_S, bootstrap
from agora.sideport import ReadinessCheck, SidePort
from agora.telemetry import Telemetry

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a dependency restarting looks like to a starting service (Kafka brokers rolling,
# a PostgreSQL failover, a Temporal frontend restart; for the Temporal client's failed
# connect, a RuntimeError, see `also`).
STARTUP_TRANSIENT: tuple[type[BaseException], ...] = (*db.FAILOVER_ERRORS, KafkaError, RPCError)
# The whole graceful shutdown, inside Kubernetes' grace period (45 s, of which the
# preStop sleep takes 5): what is left after it is cut, not SIGKILLed mid-flush.
SHUTDOWN_BUDGET_S = 35.0


async def starting(
    what: str,
    step: Callable[[], Awaitable[T]],
    *,
    also: tuple[type[BaseException], ...] = (),
    patience_s: float = STARTUP_PATIENCE_S,
    stop: asyncio.Event | None = None,
) -> T:
    """A service's start-up step against its stores, Kafka or Temporal
    (`agora.process.starting` with STARTUP_TRANSIENT, and `also`)."""
    return await process.starting(
        what, step, transient=(*STARTUP_TRANSIENT, *also), patience_s=patience_s, stop=stop
    )


@dataclass
class Runtime:
    """The dependencies a service's activities, handlers and consumers are built from."""

    settings: Settings
    service: str
    pool: asyncpg.Pool
    redis: aioredis.Redis
    producer: AIOKafkaProducer
    temporal: Client
    channels: grpc.Channels

    @property
    def redis_prefix(self) -> str:
        """Every Redis key of a service starts with this: services share no keys."""
        return f"{self.service}:"


@dataclass
class ServiceParts:
    grpc_handlers: Sequence[IServable] = ()
    activities: Sequence[Callable[..., Any]] = ()
    workflows: Sequence[type] = ()
    consumers: Sequence[kafka.ConsumerSpec] = ()
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Checks of the stores the service's parts use besides PostgreSQL and Redis (search:
    # its Elasticsearch), each part of its readiness.
    readiness: Mapping[str, ReadinessCheck] = field(default_factory=dict)


REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    build: Callable[[Runtime], Awaitable[ServiceParts]]
    # A service that emits no events (search, audit) runs no outbox relay.
    publishes_events: bool = True
    # Redis is part of its readiness only where its work needs it (identity's
    # revocations, payments' PSP store): a Redis failover must not take every pod of
    # every service out of rotation (catalog rides it out behind its breaker).
    needs_redis: bool = False
    # PostgreSQL is part of its readiness where its work uses it: every service but
    # search, whose store is Elasticsearch (a PostgreSQL failover must not take search
    # out of rotation, nor Elasticsearch down leave it in).
    needs_postgres: bool = True
    # What its own stores' outages look like while it builds (beyond STARTUP_TRANSIENT):
    # search's Elasticsearch restarting, whose client errors are not OSErrors.
    start_transient: tuple[type[BaseException], ...] = ()


def _certificate_rollover(
    client: Client, settings: Settings, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """With a Temporal client certificate, a restart once it is renewed: `stop.set` is
    what SIGTERM calls (`agora.process.bootstrap`)."""
    loaded = temporal.connected_tls_files(client, settings)
    if not loaded:
        return []  # a task that returned at once would end the service
    watcher = rollover.CertificateRollover(
        loaded, window_s=settings.temporal_tls_rollover_s, shutdown=stop.set, stopping=stop
    )
    return [asyncio.create_task(watcher.run(), name="background")]


def _failed(tasks: Iterable[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """Those of `tasks` that ended with an exception, each logged."""
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    for task in failed:
        log.error("component failed", exc_info=task.exception(), extra={"task": task.get_name()})
    return failed


async def run_service(definition: ServiceDefinition, settings: Settings) -> None:
    telemetry, stop = bootstrap(settings, definition.name)
    side = SidePort(settings.listen_host, settings.side_port(definition.name))
    await side.start()
    try:
        await _serve(definition, settings, telemetry, stop, side)
    except process.StoppedStarting as stopped:
        # What was opened goes with the process; there is nothing of its own to flush.
        log.info("stopped while starting", extra={"step": str(stopped)})
        await side.stop()
        telemetry.shutdown()


async def _serve(
    definition: ServiceDefinition,
    settings: Settings,
    telemetry: Telemetry,
    stop: asyncio.Event,
    side: SidePort,
) -> None:
    service = definition.name
    applied = await starting("migrations", lambda: db.migrate(settings, service), stop=stop)
    pool = await starting(
        "database pool",
        lambda: db.create_pool(settings, service, size=settings.db_pool_size),
        stop=stop,
    )
    redis = aioredis.from_url(
        settings.redis_url,
        password=settings.redis_password or None,
        # A Redis that stops answering fails a call in seconds, not when TCP gives up.
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )
    producer = await starting(
        "kafka producer", lambda: kafka.started_producer(settings, service), stop=stop
    )
    client = await starting(
        "temporal client", lambda: temporal.connect(settings), also=(RuntimeError,), stop=stop
    )
    channels = grpc.Channels(settings, caller=service)
    rt = Runtime(settings, service, pool, redis, producer, client, channels)
    # Building ensures schedules, indices and partitions: idempotent, so retried too.
    parts = await starting(
        "service parts",
        lambda: definition.build(rt),
        also=definition.start_transient,
        stop=stop,
    )

    relay = (
        OutboxRelay(
            pool,
            lambda: kafka.create_producer(
                settings, client_id=f"{service}-outbox", max_batch_size=outbox.ROUND_BYTES
            ),
            service,
        )
        if definition.publishes_events
        else None
    )
    consumers = [kafka.EventConsumer(settings, spec, producer) for spec in parts.consumers]
    worker = Worker(
        client,
        task_queue=settings.task_queue(service),
        activities=list(parts.activities),
        workflows=list(parts.workflows),
        workflow_runner=temporal.workflow_runner(),
        graceful_shutdown_timeout=timedelta(seconds=20),
    )
    server = await grpc.start_server(settings, service, parts.grpc_handlers)

    async def _redis_ready() -> bool:
        return bool(await redis.ping())

    if definition.needs_postgres:
        side.add_check("postgres", lambda: db.answers(pool))
    if definition.needs_redis:
        side.add_check("redis", _redis_ready)
    for name, check in parts.readiness.items():
        side.add_check(name, check)

    tasks = [
        asyncio.create_task(worker.run(), name="temporal-worker"),
        *([asyncio.create_task(relay.run(), name="outbox-relay")] if relay else []),
        *(asyncio.create_task(c.run(), name=f"consumer-{c.spec.group}") for c in consumers),
        *(asyncio.create_task(job(), name="background") for job in parts.background),
        asyncio.create_task(pki.watch_certificates(), name="background"),
        *_certificate_rollover(client, settings, stop),
    ]
    side.started = True
    log.info(
        "service started",
        extra={"migrations_applied": applied, "grpc_port": settings.grpc_port(service)},
    )

    done_or_stop = asyncio.create_task(stop.wait())
    finished, _ = await asyncio.wait([done_or_stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = _failed(t for t in finished if t is not done_or_stop)

    # Graceful shutdown: readiness off, stop intake, drain, flush.
    log.info("shutting down")
    loop = asyncio.get_running_loop()
    ends = loop.time() + SHUTDOWN_BUDGET_S
    side.draining = True
    # Consumers finish the record or batch in hand meanwhile; the gRPC server serves
    # the calls in flight to their end.
    for consumer in consumers:
        consumer.stop()
    draining = asyncio.create_task(grpc.drain(server))
    await worker.shutdown()  # waits for in-flight activities (graceful_shutdown_timeout)
    await draining
    if relay:
        relay.stop()  # after the worker: it flushes what the last activities wrote
    remaining = [t for t in tasks if not t.done() and t.get_name() != "background"]
    if remaining:
        await asyncio.wait(remaining, timeout=max(ends - loop.time(), 1.0))
    # A component that crashed while draining (the relay's last flush, a consumer's
    # last commit) exits non-zero too: read before, it left with 0 and no log.
    failed += _failed(t for t in tasks if t not in failed)
    cut = [t.get_name() for t in remaining if not t.done()]
    if cut:
        # Nothing is lost (outbox rows stay, uncommitted offsets are redelivered), but
        # on-call can tell that a last flush or batch was cut.
        log.warning("shutdown budget spent: cancelling %s", ", ".join(cut), extra={"tasks": cut})
    for task in tasks:
        task.cancel()

    async def close() -> None:
        await server.wait_closed()
        await producer.stop()
        channels.close()
        await redis.aclose()
        await pool.close()
        await side.stop()

    try:
        await asyncio.wait_for(close(), timeout=max(ends - loop.time(), 2.0))
    except TimeoutError:
        log.warning("shutdown ran out of its budget; leaving without closing the rest")
    telemetry.shutdown()
    log.info("stopped")
    if failed:
        raise SystemExit(1)
