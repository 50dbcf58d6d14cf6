"""The transactional outbox: events are rows written in the caller's transaction.

`append` writes the event (as a serialized EventEnvelope) in the same database
transaction as the state change. The `OutboxRelay` publishes unsent rows to Kafka
in id order with the idempotent producer, keyed by aggregate id (so one
aggregate's events stay in one partition, in order), then marks them sent. A
crash between publish and mark re-publishes: consumers dedupe by event id, so
nothing is lost and nothing is duplicated in effect. One relay per service is
active at a time (a Postgres advisory lock), which keeps per-aggregate order when
a service runs several processes; it checks that it still holds the lock before
every batch, and prunes rows sent more than SENT_RETENTION (7 days) ago. An event
larger than Kafka takes (MAX_EVENT_BYTES) is refused by `append`, failing its
transaction: written, it would stop the relay at that row for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import betterproto2
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry import metrics
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import inject
from temporalio.exceptions import ApplicationError

from agora import db, process
from contracts import full_name
from contracts.agora.events.v1 import EventEnvelope

log = logging.getLogger(__name__)
# What a restart of PostgreSQL or Kafka looks like from here: retried, never fatal.
# A relay that ended on one would take its whole service down (run_service exits).
_TRANSIENT = (
    *db.FAILOVER_ERRORS,
    asyncpg.InterfaceError,  # a connection closed under a call
    asyncpg.exceptions.OperatorInterventionError,  # also a cancelled query
    KafkaError,
)
# Sent rows are kept this long (for inspection), then pruned by the relay holding
# the lock, in chunks, after the first batch of each session and every PRUNE_EVERY_S,
# through the outbox_sent index (OUTBOX_SENT_INDEX_STEPS).
SENT_RETENTION = dt.timedelta(days=7)
PRUNE_EVERY_S = 600.0
PRUNE_CHUNK = 5000
# One chunk of the prune ($1: SENT_RETENTION, $2: PRUNE_CHUNK).
PRUNE_SQL = (
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
    " WHERE sent_at < now() - $1::interval ORDER BY sent_at LIMIT $2)"
)
# How often the relay asks its lock's connection for a round trip, and how long it
# waits for the answer. `is_closed()` only sees a connection closed under it; one whose
# flow was dropped silently (a middlebox, a host gone) stays open here while the server
# ends the backend, frees the lock and another relay takes it: both would publish.
LOCK_CHECK_EVERY_S = 5.0
LOCK_CHECK_TIMEOUT_S = 5.0
# Below aiokafka's default max_request_size and the brokers' message.max.bytes (1 MiB),
# with room for the key and headers.
MAX_EVENT_BYTES = 900 * 1024
# A publish round's size, counted as `record_bytes` does (more than Kafka's record
# takes), and the relay producer's batch size (kafka.create_producer(max_batch_size=)):
# a round's rows of any one partition fit one producer batch, so every send of the
# round is queued at once. With two batches for a partition, the send that opened the
# second waited for the first to drain; if the first expired meanwhile (a partition
# without a leader for request_timeout_ms), its sequence numbers were spent, and a
# broker holding no state for the session's new producer took the second batch: an
# aggregate's later events in Kafka before the earlier ones the next session resends.
# It also bounds a round by bytes, not rows alone (500 rows of 900 KiB each were
# 450 MB in one round's memory). A row larger than this goes in a round by itself.
ROUND_BYTES = 512 * 1024
# Per record, above its key, value and headers: Kafka's varints, attributes and
# deltas take at most about 40 bytes; the rest is margin (the batch header, 61).
RECORD_OVERHEAD_BYTES = 128
_meter = metrics.get_meter("agora.outbox")
_published = _meter.create_counter("agora_outbox_published", description="outbox rows published")
# Backlog and the oldest unsent row's creation (this process's clock, time.time();
# None when there is none), per service, as last seen by its relay. The age is taken
# when observed: a relay that cannot publish (Kafka down) reports a backlog that keeps
# ageing, so OutboxStale fires during the outage it is there for.
_backlog: dict[str, tuple[int, float | None]] = {}


def _observe_backlog(_: CallbackOptions) -> Iterable[Observation]:
    # A snapshot: the exporter's thread runs this while the loop's thread changes it.
    for service, (count, _since) in list(_backlog.items()):
        yield Observation(count, {"service": service})


def _observe_age(_: CallbackOptions) -> Iterable[Observation]:
    now = time.time()
    for service, (_count, since) in list(_backlog.items()):
        yield Observation(0.0 if since is None else max(now - since, 0.0), {"service": service})


_meter.create_observable_gauge(
    "agora_outbox_backlog", [_observe_backlog], description="outbox rows not yet published"
)
_meter.create_observable_gauge(
    "agora_outbox_oldest_age",
    [_observe_age],
    unit="s",
    description="age of the oldest unpublished outbox row (0 when none)",
)

# Shared by every service's first migration (activities/migrations/<service>/0001_outbox.py).
OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    id             bigserial PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    topic          text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    event_type     text        NOT NULL,
    envelope       bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS outbox_sequence (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    last_sequence  bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""

# The prune's index (each service's second outbox migration, 000N_outbox_sent.py).
# Without it, the last chunk of every prune read the whole table, a week of sent
# rows: past the pool's 30 s command timeout, which ended the relay's session, at
# its every start, before it published. Built CONCURRENTLY (outside a transaction,
# so one statement each): writes go on while a large outbox is indexed, and a build
# that failed half-way leaves an INVALID index, dropped and built again.
OUTBOX_SENT_INDEX_STEPS = (
    "DROP INDEX CONCURRENTLY IF EXISTS outbox_sent",
    "CREATE INDEX CONCURRENTLY outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL",
)
# Every statement of a service's outbox migrations, in order.
OUTBOX_SCHEMA = (OUTBOX_DDL, *OUTBOX_SENT_INDEX_STEPS)


class EventTooLarge(ApplicationError):
    """An event larger than MAX_EVENT_BYTES: Kafka would never accept it.

    Non-retryable (the same event is as large every time), also in an activity that
    does not map domain errors: its transaction fails where it can be seen.
    """

    def __init__(self, event_type: str, size: int) -> None:
        super().__init__(
            f"{event_type} event of {size} bytes is over the {MAX_EVENT_BYTES} bytes Kafka takes",
            type="EventTooLarge",
            non_retryable=True,
        )


@dataclass(frozen=True)
class WorkflowRef:
    """The Temporal workflow execution that caused an event, when one did."""

    workflow_id: str = ""
    run_id: str = ""


async def append(
    conn: asyncpg.Connection,
    *,
    producer: str,
    topic: str,
    aggregate_type: str,
    aggregate_id: str,
    payload: betterproto2.Message,
    workflow: WorkflowRef | None = None,
    event_id: uuid.UUID | None = None,
) -> EventEnvelope:
    """Write one event in the caller's (open) transaction and return its envelope."""
    sequence = await conn.fetchval(
        """
        INSERT INTO outbox_sequence (aggregate_type, aggregate_id, last_sequence)
        VALUES ($1, $2, 1)
        ON CONFLICT (aggregate_type, aggregate_id)
        DO UPDATE SET last_sequence = outbox_sequence.last_sequence + 1
        RETURNING last_sequence
        """,
        aggregate_type,
        aggregate_id,
    )
    carrier: dict[str, str] = {}
    inject(carrier)  # the current trace context travels with the event
    event_id = event_id or uuid.uuid4()
    envelope = EventEnvelope(
        event_id=str(event_id),
        event_type=f"{producer}.{type(payload).__name__}",
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        sequence=sequence,
        occurred_at=dt.datetime.now(dt.UTC),
        producer=producer,
        traceparent=carrier.get("traceparent", ""),
        tracestate=carrier.get("tracestate", ""),
        workflow_id=(workflow or WorkflowRef()).workflow_id,
        run_id=(workflow or WorkflowRef()).run_id,
        payload=bytes(payload),
        payload_type=full_name(payload),
    )
    serialized = bytes(envelope)
    if len(serialized) > MAX_EVENT_BYTES:
        raise EventTooLarge(envelope.event_type, len(serialized))
    await conn.execute(
        """
        INSERT INTO outbox
            (event_id, topic, aggregate_type, aggregate_id, sequence, event_type, envelope)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        event_id,
        topic,
        aggregate_type,
        aggregate_id,
        sequence,
        envelope.event_type,
        serialized,
    )
    return envelope


class OutboxRelay:
    """Publishes a service's outbox to Kafka; wakes on NOTIFY, polls as a fallback.

    `new_producer` makes a producer (`lambda: kafka.create_producer(...)`): each
    session publishes with one of its own, started and stopped with it. An
    idempotent producer can be left refusing every send for good (a sequence gap
    after a batch expired with no leader: OutOfOrderSequenceNumber), and only a new
    one recovers.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        new_producer: Callable[[], AIOKafkaProducer],
        service: str,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
    ):
        self._pool = pool
        self._new_producer = new_producer
        self._service = service
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock_key = zlib.crc32(f"agora-outbox-{service}".encode())
        # The oldest unsent row last seen: its id, and when it was written (time.time()).
        self._oldest: tuple[int, float] | None = None
        # Whether the current session published, or found nothing to publish: see run().
        self._worked = False
        # The last round left unsent rows behind it (a full read, or cut at ROUND_BYTES).
        self._more = False

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Publish until stopped, riding out database and Kafka outages.

        A lost connection (PostgreSQL restarted, Kafka unreachable) ends only the
        current session: the relay backs off and starts a new one, re-taking the
        lock. Rows stay unsent meanwhile, so nothing is lost. The backoff starts over
        after a session that worked, not after one that won the lock and published
        nothing: a row Kafka refuses would otherwise be retried five times a second.
        """
        # It runs untraced (its polls, one a second when idle, its lock, marks and
        # publishes): with no request behind them each statement was a trace of its own,
        # crowding real ones out of the tracing backend. Each event carries the trace
        # that wrote it, which its consumers continue.
        with suppress_instrumentation():
            await process.keep_running(
                "outbox relay",
                self._session,
                transient=_TRANSIENT,
                stopping=self._stopping,
                progressed=lambda: self._worked,
                extra={"service": self._service},
                logger=log,
            )

    async def _session(self) -> None:
        """Hold the relay lock on one connection, then publish until stopped."""
        self._worked = False
        async with self._pool.acquire() as lock_conn:
            while not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                # Another relay holds the lock and reports the backlog: a value this one
                # kept from a failed session would page while the other publishes.
                _backlog.pop(self._service, None)
                if await self._sleep(self._poll_interval * 5):
                    return
            await lock_conn.add_listener("outbox", self._on_notify)
            handed_over, dropped = True, False
            try:
                # Reported from the moment the lock is won, before the producer starts:
                # a relay taking over while Kafka is unreachable never gets to
                # publish_batch, and with the other relay's report gone, OutboxStale
                # would go silent in the outage it is there for.
                await self._report_backlog(lock_conn)
                async with self._session_producer() as producer:
                    await self._publish_until_stopped(lock_conn, producer)
            except KafkaError:
                # Publishing failed with the lock held: this relay tries again and keeps
                # reporting the backlog it saw, which keeps ageing meanwhile.
                handed_over = False
                raise
            except LockConnectionSilent:
                # Dropped (terminated, back to the pool, which detaches it): nothing
                # more goes over it, not even `is_closed()`.
                dropped = True
                raise
            finally:
                if handed_over:
                    # Stopped, or the lock lost: another process's relay reports the
                    # backlog from now on; a value left here would hold the OutboxStale
                    # page up after the backlog is gone.
                    _backlog.pop(self._service, None)
                if not dropped and not lock_conn.is_closed():
                    await lock_conn.remove_listener("outbox", self._on_notify)
                    await lock_conn.execute("SELECT pg_advisory_unlock($1)", self._lock_key)

    @contextlib.asynccontextmanager
    async def _session_producer(self) -> AsyncIterator[AIOKafkaProducer]:
        """The session's own producer, stopped at its end."""
        producer = self._new_producer()
        try:
            await producer.start()
            yield producer
        finally:
            await producer.stop()  # also after a failed start: it closes what it opened

    async def _publish_until_stopped(
        self, lock_conn: asyncpg.Connection, producer: AIOKafkaProducer
    ) -> None:
        pruned_at = -PRUNE_EVERY_S  # prune once early in each session
        checked_at = time.monotonic()  # the lock was just taken on it
        while True:
            if lock_conn.is_closed():
                # Its backend ended (terminated, reset): the lock and the LISTEN went
                # with it, and another relay may hold the lock now. Start a new
                # session, which must win the lock before it publishes.
                raise ConnectionResetError("the relay lock's connection closed")
            if time.monotonic() - checked_at >= LOCK_CHECK_EVERY_S:
                await _check_alive(lock_conn)
                checked_at = time.monotonic()
            published = await self.publish_batch(producer)
            if time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                # After a batch: a session's first publish waits for no prune.
                await self.prune_sent()
                pruned_at = time.monotonic()
            if published and self._more:
                continue  # more waiting: no pause
            if self._stopping.is_set():
                break
            await self._sleep(self._poll_interval)
        # Flush what was committed before the stop.
        while await self.publish_batch(producer):
            pass

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _sleep(self, seconds: float) -> bool:
        """Wait for a NOTIFY or the poll interval; True when stopping."""
        await process.set_within(self._wake, seconds)
        self._wake.clear()
        return self._stopping.is_set()

    async def publish_batch(self, producer: AIOKafkaProducer) -> int:
        """Publish the oldest unsent rows (a batch at most), mark them sent, return how many.

        When Kafka refuses a row, the rows before it that Kafka acknowledged are still
        marked (then the error is raised), so a row that can never be published does
        not make them go again and again. Only those before it, in id order: a later
        row may be of its aggregate, and goes again behind it.
        """
        async with self._pool.acquire() as conn:
            # The envelopes' sizes first, the envelopes of the round only: read with the
            # batch, 500 rows of a large import's events (200 KB each) were 100 MB a
            # round, from the database into memory, to publish two of them.
            fetched = await conn.fetch(
                "SELECT id, topic, aggregate_id, event_id, event_type,"
                " octet_length(envelope) AS size,"
                " extract(epoch FROM now() - created_at) AS age FROM outbox"
                " WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                self._batch_size,
            )
            # The backlog gauge from the same read (one query per wake, not two); only a
            # full batch needs counting what lies beyond it.
            count = len(fetched)
            if count == self._batch_size:
                count = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            self._note_backlog(count, fetched[0] if fetched else None)
            chosen = one_round(fetched)
            self._more = len(chosen) < count
            if not chosen:
                self._worked = True
                return 0
            envelopes = dict(
                await conn.fetch(
                    "SELECT id, envelope FROM outbox WHERE id = ANY($1::bigint[])",
                    [row["id"] for row in chosen],
                )
            )
            rows = [{**row, "envelope": envelopes[row["id"]]} for row in chosen]
            acknowledged, error = await _send(producer, rows)
            if acknowledged:
                await conn.execute(
                    "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                    [row["id"] for row in rows[:acknowledged]],
                )
                _published.add(acknowledged, {"service": self._service})
                self._worked = True
            if error is not None:
                raise error
        self._worked = True
        return len(rows)

    async def _report_backlog(self, conn: asyncpg.Connection) -> None:
        oldest = await conn.fetchrow(
            "SELECT id, extract(epoch FROM now() - created_at) AS age,"
            " (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS count"
            " FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1"
        )
        self._note_backlog(int(oldest["count"]) if oldest else 0, oldest)

    def _note_backlog(self, count: int, oldest: asyncpg.Record | None) -> None:
        """The backlog gauges: `count` unsent rows, the oldest `oldest` (its id and age)."""
        since = None
        if oldest is not None:
            oldest_id = int(oldest["id"])
            if self._oldest is None or self._oldest[0] != oldest_id:
                # First seen: when it was written, on this process's clock. Kept while
                # it stays the oldest, so the age grows steadily.
                self._oldest = (oldest_id, time.time() - float(oldest["age"]))
            since = self._oldest[1]
        _backlog[self._service] = (count, since)

    async def prune_sent(self) -> int:
        """Delete rows sent more than SENT_RETENTION ago, a bounded chunk at a time;
        returns how many. Kafka holds the events; the rows were only the hand-over."""
        deleted = 0
        async with self._pool.acquire() as conn:
            while True:
                status = await conn.execute(PRUNE_SQL, SENT_RETENTION, PRUNE_CHUNK)
                count = int(status.rpartition(" ")[2])
                deleted += count
                if count < PRUNE_CHUNK or self._stopping.is_set():
                    break
        if deleted:
            log.info("outbox pruned", extra={"service": self._service, "rows": deleted})
        return deleted

    async def backlog(self) -> int:
        async with self._pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))


async def _check_alive(lock_conn: asyncpg.Connection) -> None:
    """A round trip on the lock's connection: its backend, which holds the session's
    advisory lock, still answers. If it does not within LOCK_CHECK_TIMEOUT_S, the
    connection is dropped here (no UNLISTEN or unlock is sent over it: they would
    hang as the check did) and the session ends; the next must win the lock again."""
    try:
        await lock_conn.fetchval("SELECT 1", timeout=LOCK_CHECK_TIMEOUT_S)
    except (TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as error:
        # InternalClientError: a connection left mid-protocol by a server that went
        # away ("another operation is in progress"); unusable, as a silent one.
        lock_conn.terminate()
        raise LockConnectionSilent(f"the relay lock's connection is silent: {error!r}") from None


class LockConnectionSilent(ConnectionResetError):
    """The relay lock's connection did not answer its check and was dropped."""


def one_round(rows: Sequence[asyncpg.Record]) -> list[asyncpg.Record]:
    """The first of `rows` (in id order) that together stay within ROUND_BYTES; the
    first row always, however large (Kafka refuses one past its limit, see _send)."""
    taken: list[asyncpg.Record] = []
    size = 0
    for row in rows:
        size += record_bytes(row)
        if taken and size > ROUND_BYTES:
            break
        taken.append(row)
    return taken


Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def kafka_record(row: Mapping[str, Any]) -> Record:
    """An outbox row as the Kafka record _send writes: key, value and headers."""
    return row["aggregate_id"].encode(), bytes(row["envelope"]), _headers(row)


def _headers(row: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    return [
        ("event_id", str(row["event_id"]).encode()),
        ("event_type", row["event_type"].encode()),
    ]


def record_bytes(row: Mapping[str, Any]) -> int:
    """What `row` takes in a producer batch, or a little more: its record's key, value
    and headers plus RECORD_OVERHEAD_BYTES. The value's size is the row's `size` where
    only that was read (publish_batch), else its envelope's."""
    size = row.get("size")
    value = len(bytes(row["envelope"])) if size is None else int(size)
    named = sum(len(name) + len(content) for name, content in _headers(row))
    return len(row["aggregate_id"].encode()) + value + named + RECORD_OVERHEAD_BYTES


async def _send(
    producer: AIOKafkaProducer, rows: Sequence[Mapping[str, Any]]
) -> tuple[int, BaseException | None]:
    """Send `rows` in order; how many of them, from the first, Kafka acknowledged, and
    the error that stopped the others (None when none did)."""
    futures = []
    refused: BaseException | None = None
    for row in rows:
        key, value, headers = kafka_record(row)
        try:
            future = await producer.send(row["topic"], value=value, key=key, headers=headers)
        except KafkaError as error:  # refused before it was queued (too large, say)
            refused = error
            break
        futures.append(future)
    results = await asyncio.gather(*futures, return_exceptions=True)
    for acknowledged, result in enumerate(results):
        if isinstance(result, BaseException):
            return acknowledged, result
    return len(results), refused
