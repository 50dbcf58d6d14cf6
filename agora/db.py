"""PostgreSQL: a connection pool per service and its versioned SQL migrations (yoyo)."""

from __future__ import annotations

import asyncio
import logging
import zlib
from pathlib import Path

import asyncpg
import psycopg2
from tenacity import RetryCallState, Retrying, retry_if_result, wait_fixed
from yoyo import get_backend, read_migrations

from agora.config import Settings

log = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(__file__).resolve().parent.parent / "activities" / "migrations"

# What a PostgreSQL restart or failover looks like to a client: connections refused or
# reset, the server starting or shutting down (57P03, 57P01, 57P02), and too many
# connections (53300) while every pool of the platform reconnects at once. Whoever
# meets them retries (a starting service, the outbox relay): they pass.
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


def _migrate(dsn: str, directory: Path) -> int:
    backend = get_backend(dsn)
    migrations = read_migrations(str(directory))
    # A session-level advisory lock on a connection of its own, not yoyo's lock table:
    # a row in the table outlives a process killed while holding it (OOM, SIGKILL, a
    # database failover), and every later start of the service then failed with
    # LockTimeout until someone broke the lock. The session's lock goes with it.
    lock = connect_sync(dsn)
    try:
        lock.autocommit = True
        _take_migration_lock(lock)
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


def _take_migration_lock(lock: psycopg2.extensions.connection) -> None:
    """Ask for MIGRATION_LOCK until it is granted, idle between the asks.

    Not a blocking `pg_advisory_lock`: a statement waiting for it holds a snapshot,
    and a `CREATE INDEX CONCURRENTLY` in the migrations of the process holding the
    lock waits for every older snapshot in the database to end, so both would wait
    for each other for good (PostgreSQL sees no deadlock: the holder's connection is
    idle). Between tries this connection holds no snapshot.
    """

    def granted() -> bool:
        with lock.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,))
            row = cursor.fetchone()
        return bool(row and row[0])

    def first_wait(state: RetryCallState) -> None:
        if state.attempt_number == 1:
            log.info("migrations: another process is applying them; waiting for its lock")

    Retrying(
        retry=retry_if_result(lambda taken: not taken),
        wait=wait_fixed(MIGRATION_LOCK_POLL_S),
        before_sleep=first_wait,
    )(granted)


def connect_sync(dsn: str) -> psycopg2.extensions.connection:
    """A psycopg2 connection (for the migrations' lock) with the platform's KEEPALIVES."""
    options = " ".join(f"-c {name}={value}" for name, value in KEEPALIVES.items())
    return psycopg2.connect(backend_dsn(dsn), options=options)


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
    return await asyncio.to_thread(_migrate, settings.db_dsn(service), directory)


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
