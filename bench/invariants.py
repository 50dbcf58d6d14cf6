"""What must hold after a chaos run, checked from the databases and stores, not from the API.

Each check polls until it holds or the shared deadline passes (events, sagas and
indexing are asynchronous; a fault delays them), then answers a `Verdict`:

* every accepted order exists (none lost) and every order of the run ends in a
  final state (no stuck saga);
* no order is charged twice: at most one capture per order, never more captured
  than the order's total, a completed order captured exactly its total, a
  rejected or cancelled one holds and keeps nothing;
* stock of each sku ordered = initial stock - committed reservations, nothing
  left reserved, and what was committed is exactly what completed orders hold;
* the payments ledger nets to zero and matches the intents (payments' own check);
* the search index converges to the catalog for every sku repriced in the run;
* every event written to an outbox during the run is in the audit log exactly
  once, and the audit chain verifies from genesis.

Used by `python -m bench.chaos` and by tests/integration/test_zz_chaos.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from agora import db
from agora.config import Settings
from workers.audit.signing import load_signer
from workers.audit.verification import verify_chain
from workers.payments import ledger
from workers.search.wiring import elasticsearch as search_client

FINAL = ("COMPLETED", "REJECTED", "CANCELLED")
UNDONE = ("REJECTED", "CANCELLED")
# Services whose outbox feeds the audit log (audit's own outbox is unused).
PRODUCERS = ("identity", "catalog", "inventory", "orders", "payments")


@dataclass
class RunFacts:
    """What the run did, as its clients saw it."""

    started_at: datetime  # aware UTC, before the run's first write
    customer_ids: list[str]  # every order of these customers belongs to the run
    accepted_orders: list[str]  # order ids answered 2xx
    initial_stock: dict[str, int]  # on_hand per ordered sku when the load began
    updated_skus: list[str]  # skus the run repriced (or tried to)


@dataclass
class Verdict:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0  # how long it took to hold (or to give up)
    problems: list[str] = field(default_factory=list)


@dataclass
class _Outcome:
    ok: bool
    detail: str
    problems: list[str] = field(default_factory=list)


Probe = Callable[[], Awaitable[_Outcome]]


# Between two runs of a probe; and how often a probe that does not hold yet says
# what it sees (a check may re-poll for minutes: silence reads as a hang).
POLL_S = 1.0
REPORT_S = 15.0


async def _until(
    name: str, probe: Probe, deadline: float, progress: Callable[[str], None] = print
) -> Verdict:
    """Re-runs `probe` until it holds or `deadline` (monotonic) passes."""
    started = reported = time.monotonic()
    while True:
        try:
            outcome = await probe()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            # A store still coming back after the last fault: not holding yet.
            outcome = _Outcome(False, f"store not answering: {type(error).__name__}: {error}")
        now = time.monotonic()
        if outcome.ok or now >= deadline:
            return Verdict(
                name, outcome.ok, outcome.detail, round(now - started, 1), outcome.problems[:20]
            )
        if now - reported >= REPORT_S:
            reported = now
            progress(f"  ...  {name}: not yet after {now - started:.0f}s: {outcome.detail}")
        await asyncio.sleep(POLL_S)


async def _fetch(settings: Settings, service: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.db_dsn(service))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


# Orders -----------------------------------------------------------------------


async def run_orders(settings: Settings, facts: RunFacts) -> dict[str, tuple[str, int]]:
    """Every order of the run's customers: order id -> (status, total)."""
    rows = await _fetch(
        settings,
        "orders",
        "SELECT order_id::text AS id, status, total_minor FROM orders WHERE customer_id = ANY($1)",
        facts.customer_ids,
    )
    return {r["id"]: (r["status"], r["total_minor"]) for r in rows}


def orders_probe(settings: Settings, facts: RunFacts) -> Probe:
    async def probe() -> _Outcome:
        orders = await run_orders(settings, facts)
        lost = sorted(set(facts.accepted_orders) - set(orders))
        stuck = sorted(oid for oid, (status, _) in orders.items() if status not in FINAL)
        by_status = Counter(status for status, _ in orders.values())
        detail = (
            f"{len(facts.accepted_orders)} accepted, {len(orders)} in the orders database"
            f" ({dict(sorted(by_status.items()))}); lost {len(lost)}, not final {len(stuck)}"
        )
        problems = [f"lost: {oid}" for oid in lost] + [
            f"not final: {oid} {orders[oid][0]}" for oid in stuck
        ]
        return _Outcome(not lost and not stuck, detail, problems)

    return probe


# Payments -------------------------------------------------------------------------


def charges_probe(settings: Settings, facts: RunFacts) -> Probe:
    async def probe() -> _Outcome:
        orders = await run_orders(settings, facts)
        ids = list(orders)
        captures = {
            r["order_id"]: r["n"]
            for r in await _fetch(
                settings,
                "payments",
                "SELECT i.order_id, count(*) AS n FROM payment_operations o"
                " JOIN payment_intents i USING (payment_id)"
                " WHERE o.operation = 'capture' AND o.outcome = 'ok' AND i.order_id = ANY($1)"
                " GROUP BY i.order_id",
                ids,
            )
        }
        amounts = {
            r["order_id"]: r
            for r in await _fetch(
                settings,
                "payments",
                "SELECT order_id, sum(authorized_minor)::bigint AS authorized,"
                " sum(captured_minor)::bigint AS captured, sum(released_minor)::bigint AS released,"
                " sum(refunded_minor)::bigint AS refunded"
                " FROM payment_intents WHERE order_id = ANY($1) GROUP BY order_id",
                ids,
            )
        }
        problems = []
        for oid, (status, total) in orders.items():
            n = captures.get(oid, 0)
            row = amounts.get(oid)
            captured = row["captured"] if row else 0
            refunded = row["refunded"] if row else 0
            held = (row["authorized"] - row["captured"] - row["released"]) if row else 0
            if n > 1:
                problems.append(f"{oid}: {n} captures")
            if captured > total:
                problems.append(f"{oid}: captured {captured} > total {total}")
            if status == "COMPLETED" and (n != 1 or captured != total or refunded):
                problems.append(
                    f"{oid}: COMPLETED with {n} captures, captured {captured} of {total},"
                    f" refunded {refunded}"
                )
            if status in UNDONE and (captured - refunded or held):
                problems.append(
                    f"{oid}: {status} but keeps {captured - refunded} captured, {held} held"
                )
        completed = sum(1 for status, _ in orders.values() if status == "COMPLETED")
        detail = (
            f"{len(orders)} orders, {completed} completed, {sum(captures.values())} captures;"
            f" {len(problems)} problems"
        )
        return _Outcome(not problems, detail, problems)

    return probe


def ledger_probe(settings: Settings) -> Probe:
    async def probe() -> _Outcome:
        conn = await asyncpg.connect(settings.db_dsn("payments"))
        try:
            report = await ledger.check(conn)
        finally:
            await conn.close()
        detail = (
            f"{report.entry_count} entries over {report.intent_count} intents,"
            f" net by currency {report.net_by_currency}"
        )
        return _Outcome(report.balanced, detail, list(report.problems))

    return probe


# Inventory ---------------------------------------------------------------------------


async def stock_levels(settings: Settings, skus: list[str]) -> dict[str, tuple[int, int]]:
    """sku -> (on_hand, reserved)."""
    rows = await _fetch(
        settings, "inventory", "SELECT sku, on_hand, reserved FROM stock WHERE sku = ANY($1)", skus
    )
    return {r["sku"]: (r["on_hand"], r["reserved"]) for r in rows}


def stock_probe(settings: Settings, facts: RunFacts) -> Probe:
    async def probe() -> _Outcome:
        skus = list(facts.initial_stock)
        levels = await stock_levels(settings, skus)
        orders = await run_orders(settings, facts)
        committed: dict[str, int] = defaultdict(int)
        for r in await _fetch(
            settings,
            "inventory",
            "SELECT l.sku, sum(l.quantity)::bigint AS q FROM reservation_lines l"
            " JOIN reservations r USING (reservation_id)"
            " WHERE r.status = 'committed' AND l.sku = ANY($1) AND r.order_id = ANY($2)"
            " GROUP BY l.sku",
            skus,
            list(orders),
        ):
            committed[r["sku"]] = r["q"]
        completed = [oid for oid, (status, _) in orders.items() if status == "COMPLETED"]
        sold: dict[str, int] = defaultdict(int)
        for r in await _fetch(
            settings,
            "orders",
            "SELECT sku, sum(quantity)::bigint AS q FROM order_lines"
            " WHERE order_id = ANY($1::uuid[]) AND sku = ANY($2) GROUP BY sku",
            [uuid.UUID(oid) for oid in completed],
            skus,
        ):
            sold[r["sku"]] = r["q"]
        problems = []
        for sku, initial in facts.initial_stock.items():
            on_hand, reserved = levels.get(sku, (0, 0))
            expected = initial - committed[sku]
            if on_hand != expected:
                problems.append(f"{sku}: on hand {on_hand}, expected {initial} - {committed[sku]}")
            if reserved:
                problems.append(f"{sku}: {reserved} still reserved")
            if committed[sku] != sold[sku]:
                problems.append(
                    f"{sku}: {committed[sku]} committed, completed orders hold {sold[sku]}"
                )
        detail = (
            f"{len(skus)} skus, {sum(committed.values())} units committed,"
            f" {sum(sold.values())} units in completed orders; {len(problems)} problems"
        )
        return _Outcome(not problems, detail, problems)

    return probe


# Search ----------------------------------------------------------------------------


def search_probe(settings: Settings, facts: RunFacts) -> Probe:
    async def probe() -> _Outcome:
        skus = sorted(facts.updated_skus)
        if not skus:
            return _Outcome(True, "no sku repriced")
        catalog = {
            r["sku"]: (r["price_minor"], r["version"])
            for r in await _fetch(
                settings,
                "catalog",
                "SELECT sku, price_minor, version FROM products WHERE sku = ANY($1)",
                skus,
            )
        }
        es = search_client(settings)
        try:
            found = await es.mget(index=settings.search_index_prefix, ids=skus)
        except Exception as error:  # Elasticsearch still coming back: not converged yet
            return _Outcome(False, f"Elasticsearch not answering: {type(error).__name__}")
        finally:
            await es.close()
        problems = []
        for doc in found["docs"]:
            source = doc.get("_source") or {}
            indexed = (source.get("price_minor"), source.get("product_version"))
            if indexed != catalog.get(doc["_id"]):
                problems.append(
                    f"{doc['_id']}: index has price/version {indexed},"
                    f" catalog {catalog.get(doc['_id'])}"
                )
        detail = f"{len(skus)} repriced skus, {len(problems)} differ from the catalog"
        return _Outcome(not problems, detail, problems)

    return probe


# Audit ---------------------------------------------------------------------------------


async def outbox_events(settings: Settings, since: datetime) -> dict[str, tuple[str, bool]]:
    """event id -> (producer, published) for every outbox row written since `since`."""
    events: dict[str, tuple[str, bool]] = {}
    for service in PRODUCERS:
        for r in await _fetch(
            settings,
            service,
            "SELECT event_id::text AS id, sent_at IS NOT NULL AS sent FROM outbox"
            " WHERE created_at >= $1",
            since,
        ):
            events[r["id"]] = (service, r["sent"])
    return events


def audit_probe(settings: Settings, facts: RunFacts) -> Probe:
    async def probe() -> _Outcome:
        events = await outbox_events(settings, facts.started_at)
        unsent = [eid for eid, (_, sent) in events.items() if not sent]
        counts = {
            r["id"]: r["n"]
            for r in await _fetch(
                settings,
                "audit",
                "SELECT event_id::text AS id, count(*) AS n FROM audit_log"
                " WHERE event_id = ANY($1::uuid[]) GROUP BY event_id",
                [uuid.UUID(eid) for eid in events],
            )
        }
        missing = [eid for eid in events if eid not in counts]
        repeated = [eid for eid, n in counts.items() if n != 1]
        by_producer = Counter(producer for producer, _ in events.values())
        detail = (
            f"{len(events)} events written during the run ({dict(sorted(by_producer.items()))});"
            f" unpublished {len(unsent)}, missing from the audit log {len(missing)},"
            f" recorded more than once {len(repeated)}"
        )
        problems = (
            [f"unpublished: {events[e][0]} {e}" for e in unsent]
            + [f"not in the audit log: {events[e][0]} {e}" for e in missing]
            + [f"recorded {counts[e]} times: {e}" for e in repeated]
        )
        return _Outcome(not (unsent or missing or repeated), detail, problems)

    return probe


def chain_probe(settings: Settings) -> Probe:
    async def probe() -> _Outcome:
        pool = await db.create_pool(settings, "audit", size=2)
        try:
            result = await verify_chain(pool, load_signer(settings).public_key, from_genesis=True)
        finally:
            await pool.close()
        detail = f"{result.records_checked} records checked from genesis"
        if not result.ok:
            detail += f"; first bad sequence {result.first_bad_sequence}: {result.failure}"
        return _Outcome(result.ok, detail)

    return probe


# All of them --------------------------------------------------------------------------


def order_checks(settings: Settings, facts: RunFacts) -> list[tuple[str, Probe]]:
    """Nothing lost, every order final, none charged twice: what any order run must hold."""
    return [
        ("orders: none lost, every one final", orders_probe(settings, facts)),
        ("payments: no order charged twice", charges_probe(settings, facts)),
    ]


async def hold(
    checks: list[tuple[str, Probe]],
    *,
    within_s: float = 180.0,
    progress: Callable[[str], None] = print,
) -> list[Verdict]:
    """Each check in order, re-run until it holds or `within_s` (for all of them) passes."""
    deadline = time.monotonic() + within_s
    verdicts = []
    for name, probe in checks:
        verdict = await _until(name, probe, deadline, progress)
        progress(f"  {'ok  ' if verdict.ok else 'FAIL'} {name}: {verdict.detail}")
        verdicts.append(verdict)
    return verdicts


async def check_all(
    settings: Settings,
    facts: RunFacts,
    *,
    within_s: float = 180.0,
    progress: Callable[[str], None] = print,
) -> list[Verdict]:
    """Every invariant, in dependency order (orders settle before money and stock are read)."""
    checks: list[tuple[str, Probe]] = [
        *order_checks(settings, facts),
        ("payments: ledger nets to zero, matches intents", ledger_probe(settings)),
        ("inventory: stock = initial - committed", stock_probe(settings, facts)),
        ("search: index converges to the catalog", search_probe(settings, facts)),
        ("audit: every event exactly once", audit_probe(settings, facts)),
        ("audit: chain verifies from genesis", chain_probe(settings)),
    ]
    return await hold(checks, within_s=within_s, progress=progress)
