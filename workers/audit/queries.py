"""Reading the log: by aggregate, trace or workflow, within a time range, keyset-paginated.

Pages are in log order; the cursor is the last log sequence of the previous
page (opaque to clients), so a page never skips or repeats a row however many
are appended meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass

import asyncpg

from agora.text import checked
from workers.audit.errors import InvalidQuery

DEFAULT_PAGE = 100
MAX_PAGE = 500
RECORD_COLUMNS = (
    "log_sequence, recorded_at, topic, trace_id, canonical, prev_hash, hash, "
    "aggregate_type, aggregate_id, workflow_id, run_id, producer, occurred_at"
)


@dataclass(frozen=True)
class EventQuery:
    aggregate_type: str = ""
    aggregate_id: str = ""
    trace_id: str = ""
    workflow_id: str = ""
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    page_size: int = 0
    cursor: str = ""


@dataclass(frozen=True)
class Page:
    rows: list[asyncpg.Record]
    next_cursor: str


def encode_cursor(log_sequence: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{log_sequence}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        # ASCII digits within bigint: a larger number would fail in the query, not here.
        if kind != "seq" or not (value.isascii() and value.isdigit()) or len(value) > 19:
            raise ValueError(text)
        sequence = int(value)
        if sequence >= 2**63:
            raise ValueError(text)
        return sequence
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidQuery("cursor is not one this service issued") from None


def _conditions(query: EventQuery) -> tuple[list[str], list[object]]:
    selectors = sum(bool(s) for s in (query.aggregate_id, query.trace_id, query.workflow_id))
    if selectors > 1:
        raise InvalidQuery("choose one of aggregate, trace_id or workflow_id")
    if bool(query.aggregate_type) != bool(query.aggregate_id):
        raise InvalidQuery("an aggregate needs both its type and its id")
    if query.trace_id and (
        len(query.trace_id) != 32 or any(c not in "0123456789abcdef" for c in query.trace_id)
    ):
        raise InvalidQuery("trace_id must be 32 lower-case hex digits")
    if query.start_time and query.end_time and query.start_time >= query.end_time:
        raise InvalidQuery("start_time must be before end_time")
    # A NUL would fail the query (UNKNOWN, as if audit were broken), not match nothing.
    checked(query.aggregate_type, "aggregate_type")
    checked(query.aggregate_id, "aggregate_id")
    checked(query.workflow_id, "workflow_id")
    where: list[str] = []
    args: list[object] = []

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.aggregate_id:
        where.append(f"aggregate_type = {arg(query.aggregate_type)}")
        where.append(f"aggregate_id = {arg(query.aggregate_id)}")
    if query.trace_id:
        where.append(f"trace_id = {arg(query.trace_id)}")
    if query.workflow_id:
        where.append(f"workflow_id = {arg(query.workflow_id)}")
    if query.start_time:
        where.append(f"occurred_at >= {arg(query.start_time)}")
    if query.end_time:
        where.append(f"occurred_at < {arg(query.end_time)}")
    if query.cursor:
        where.append(f"log_sequence > {arg(decode_cursor(query.cursor))}")
    return where, args


async def query_events(pool: asyncpg.Pool, query: EventQuery) -> Page:
    size = query.page_size or DEFAULT_PAGE
    if not 1 <= size <= MAX_PAGE:
        raise InvalidQuery(f"page_size must be 1-{MAX_PAGE}")
    where, args = _conditions(query)
    sql = f"SELECT {RECORD_COLUMNS} FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY log_sequence LIMIT {size + 1}"
    rows = await pool.fetch(sql, *args)
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, encode_cursor(int(rows[-1]["log_sequence"])) if more else "")


# An export's caps (api.py); read at call time, so a test can lower them.
MAX_OWN_EVENTS = 10_000
MAX_LINKED_EVENTS = 10_000


@dataclass(frozen=True)
class Trail:
    """An aggregate's trail in log order; `truncated` when a cap left rows out."""

    rows: list[asyncpg.Record]
    truncated: bool


async def events_of_trail(
    pool: asyncpg.Pool,
    aggregate_type: str,
    aggregate_id: str,
    *,
    own_limit: int | None = None,
    linked_limit: int | None = None,
) -> Trail:
    """An aggregate's events plus every event of the workflows that caused them.

    An order's trail includes the payment and stock events its saga produced:
    those carry the order workflow's id, not the order's aggregate id. The caps
    apply to each kind apart, so a busy workflow (an import of thousands of
    products) never crowds out the aggregate's own newest events.
    """
    checked(aggregate_type, "aggregate_type")
    checked(aggregate_id, "aggregate_id")
    own_limit = MAX_OWN_EVENTS if own_limit is None else own_limit
    linked_limit = MAX_LINKED_EVENTS if linked_limit is None else linked_limit
    # One snapshot: the linked rows are those of the workflows the own rows name.
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        own = await conn.fetch(
            f"""SELECT {RECORD_COLUMNS} FROM audit_log
                WHERE aggregate_type = $1 AND aggregate_id = $2
                ORDER BY log_sequence LIMIT $3""",
            aggregate_type,
            aggregate_id,
            own_limit + 1,
        )
        flows = sorted({row["workflow_id"] for row in own[:own_limit] if row["workflow_id"]})
        linked = await _linked_events(conn, flows, aggregate_type, aggregate_id, linked_limit + 1)
    truncated = len(own) > own_limit or len(linked) > linked_limit
    rows = sorted([*own[:own_limit], *linked[:linked_limit]], key=lambda r: r["log_sequence"])
    return Trail(rows, truncated)


async def _linked_events(
    conn: asyncpg.Connection, flows: list[str], aggregate_type: str, aggregate_id: str, limit: int
) -> list[asyncpg.Record]:
    """The events of `flows` that are not the aggregate's own, in log order."""
    if not flows:
        return []
    return await conn.fetch(
        f"""SELECT {RECORD_COLUMNS} FROM audit_log
            WHERE workflow_id <> '' AND workflow_id = ANY($1::text[])
              AND NOT (aggregate_type = $2 AND aggregate_id = $3)
            ORDER BY log_sequence LIMIT $4""",
        flows,
        aggregate_type,
        aggregate_id,
        limit,
    )
