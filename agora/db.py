"""PostgreSQL: a connection pool per service and its versioned SQL migrations (yoyo)."""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib
from pathlib import Path
from urllib.parse import quote

import asyncpg
import psycopg2
from tenacity import RetryCallState, Retrying, retry_if_result, wait_fixed
from yoyo import get_backend, read_migrations
from yoyo.backends import DatabaseBackend

from agora.config import Settings

log = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(__file__).resolve().parent.parent / "activities" / "migrations"

# What a PostgreSQL restart or failover looks like to a client: connections refused or
# reset, the server starting or shutting down (57P03, 57P01, 57P02), and too many
# connections (53300) while every pool of the platform reconnects at once. Whoever
# meets them retries (a starting service, the outbox relay): they pass.
# A statement stopped for taking too long: the pool's `command_timeout` (asyncpg
# raises TimeoutError), PostgreSQL's statement_timeout or a cancel (57014). A gRPC
# handler answers DEADLINE_EXCEEDED for it (agora.grpc), not UNKNOWN, a crash.
STATEMENT_TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError, asyncpg.QueryCanceledError)
FAILOVER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    psycopg2.OperationalError,
)

# Server-side TCP liveness, set on every connection the platform opens (user-settable
# settings sent at its start; tcp_user_timeout needs PostgreSQL 12, ignored on a unix
# socket). A client gone without a FIN (its node lost, the network cut) otherwise
# keeps its backend, and any session advisory lock held there (the outbox relay's,
# the migrations'), until the server's kernel gives up: after ~2 h of silence by
# Linux's keepalive defaults, or ~15 min of retransmissions when the server has
# something to send it (a NOTIFY to the relay's listening connection). With these
# the backend ends within 50 s: first probe after 20 s of silence, then one each
# 10 s, and no sent data left unacknowledged over 50 s. A standby relay, trying the
# lock every few seconds, takes over within a minute.
KEEPALIVES: dict[str, str] = {
    "tcp_keepalives_idle": "20",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "50000",  # ms
}


async def lock_for_transaction(conn: asyncpg.Connection, name: str) -> None:
    """Serialize on `name` until the current transaction ends: a transaction-scoped
    advisory lock on its 64-bit hash (a collision only serializes two unrelated names)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", name)


def migrations_dir(service: str) -> Path:
    return MIGRATIONS_ROOT / service


# The advisory lock every process of a service takes around its migrations.
MIGRATION_LOCK = zlib.crc32(b"agora-migrations")
# How often a process whose service's migrations another process is applying asks
# for the lock again.
MIGRATION_LOCK_POLL_S = 0.5
# How often a process waiting for that lock says so, with how long it has waited.
MIGRATION_LOCK_LOG_S = 30.0


def migration_backend(dsn: str) -> DatabaseBackend:
    """yoyo's backend, whose own connection runs the migrations, each in a transaction
    that may hold ACCESS EXCLUSIVE locks: with the KEEPALIVES too, or a process lost
    mid-migration left that transaction, and every pod of the service blocked on it,
    for the ~2 h of Linux's keepalive defaults."""
    separator = "&" if "?" in dsn else "?"
    return get_backend(f"{dsn}{separator}options={quote(keepalive_options(), safe='')}")


def _migrate(dsn: str, directory: Path, halt: threading.Event) -> int:
    backend = migration_backend(dsn)
    migrations = read_migrations(str(directory))
    # A session-level advisory lock on a connection of its own, not yoyo's lock table:
    # a row in the table outlives a process killed while holding it (OOM, SIGKILL, a
    # database failover), and every later start of the service then failed with
    # LockTimeout until someone broke the lock. The session's lock goes with it.
    lock = connect_sync(dsn)
    try:
        lock.autocommit = True
        _take_migration_lock(lock, halt)
        # yoyo still takes its table lock once, to create or upgrade its own tables on
        # a database's first start; a process killed inside that left its row, and
        # every later start waited 10 s and failed (LockTimeout). Under the advisory
        # lock no other process of the service is migrating: a row there is a leftover.
        backend.break_lock()
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    finally:
        lock.close()  # the lock with it
    return len(pending)


def _take_migration_lock(lock: psycopg2.extensions.connection, halt: threading.Event) -> None:
    """Ask for MIGRATION_LOCK until it is granted, idle between the asks, or until
    `halt` is set (then tenacity's RetryError).

    Not a blocking `pg_advisory_lock`: a statement waiting for it holds a snapshot,
    and a `CREATE INDEX CONCURRENTLY` in the migrations of the process holding the
    lock waits for every older snapshot in the database to end, so both would wait
    for each other for good (PostgreSQL sees no deadlock: the holder's connection is
    idle). Between tries this connection holds no snapshot.

    Without a deadline: the lock goes with its holder's session (KEEPALIVES end a
    lost one's within a minute), so a held lock is a live process migrating, and a
    long migration (an index built on a large table) is no reason to fail this start.
    The wait is logged every MIGRATION_LOCK_LOG_S with the holder's backend pid, for
    pg_stat_activity to tell whose it is.
    """

    def granted() -> bool:
        with lock.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,))
            row = cursor.fetchone()
        return bool(row and row[0])

    logged_at: list[float] = []  # when the wait was last logged, in seconds waited

    def report_wait(state: RetryCallState) -> None:
        waited = state.seconds_since_start or 0.0
        if logged_at and waited - logged_at[-1] < MIGRATION_LOCK_LOG_S:
            return
        logged_at.append(waited)
        log.info(
            "migrations: another process is applying them; waiting for its lock",
            extra={"waited_s": round(waited, 1), "holder_pid": _migration_lock_holder(lock)},
        )

    def pause(seconds: float) -> None:
        halt.wait(seconds)  # a halt ends the pause between asks too

    Retrying(
        retry=retry_if_result(lambda taken: not taken),
        wait=wait_fixed(MIGRATION_LOCK_POLL_S),
        stop=lambda _: halt.is_set(),
        sleep=pause,
        before_sleep=report_wait,
    )(granted)


def _migration_lock_holder(lock: psycopg2.extensions.connection) -> int | None:
    """The backend pid holding MIGRATION_LOCK in this database; None if just let go."""
    # A bigint advisory key shows as classid (high 32 bits), objid (low), objsubid 1.
    with lock.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = 0 AND objid = %s::bigint::oid AND objsubid = 1",
            (MIGRATION_LOCK,),
        )
        row = cursor.fetchone()
    return int(row[0]) if row else None


def connect_sync(dsn: str) -> psycopg2.extensions.connection:
    """A psycopg2 connection (for the migrations' lock) with the platform's KEEPALIVES."""
    return psycopg2.connect(backend_dsn(dsn), options=keepalive_options())


def keepalive_options() -> str:
    """KEEPALIVES as libpq's `options` (settings sent at the connection's start)."""
    return " ".join(f"-c {name}={value}" for name, value in KEEPALIVES.items())


def backend_dsn(dsn: str) -> str:
    """A libpq URI from yoyo's (`postgresql+psycopg://` names a driver for yoyo only)."""
    scheme, _, rest = dsn.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgres") else dsn


async def migrate(settings: Settings, service: str) -> int:
    """Apply the service's pending migrations under its own role; returns how many ran.

    An advisory lock (MIGRATION_LOCK) is held while it runs, so several processes of
    one service starting together apply each migration once.
    """
    directory = migrations_dir(service)
    if not directory.exists():
        return 0
    halt = threading.Event()
    try:
        return await asyncio.to_thread(_migrate, settings.db_dsn(service), directory, halt)
    except asyncio.CancelledError:
        # A stop at start: the thread stops asking for the lock (the process, which
        # waits for its threads at exit, would wait for the lock). Migrations under
        # way run to their end.
        halt.set()
        raise


async def create_pool(settings: Settings, service: str, *, size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.db_dsn(service),
        min_size=2,
        max_size=size,
        command_timeout=30,
        server_settings={"application_name": f"agora-{service}", **KEEPALIVES},
    )
    assert pool is not None
    return pool


# Readiness waits this long for a pooled connection (within the side port's 2 s).
READY_ACQUIRE_S = 1.0


async def answers(pool: asyncpg.Pool) -> bool:
    """Readiness: PostgreSQL answers `SELECT 1` on a pooled connection, or every
    connection of the pool is in use. Busy is not down: under a flash sale, with work
    queued on hot rows holding each connection, a probe that waited its turn failed on
    every pod of the service at once, and the Service lost all its endpoints. A
    PostgreSQL gone away fails the idle connections' `SELECT 1` (or their reconnect)."""
    try:
        async with pool.acquire(timeout=READY_ACQUIRE_S) as conn:
            return bool(await conn.fetchval("SELECT 1") == 1)
    except TimeoutError:
        return pool.get_idle_size() == 0 and pool.get_size() == pool.get_max_size()
