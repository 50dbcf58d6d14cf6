"""`python -m bench.audit [--events N]`: audit insert throughput and chain verification time.

Runs against a scratch database `audit_bench` (created, migrated with audit's own
migrations under the audit role, and dropped again as the superuser), so the
real log of the stack is never touched: the log is append-only and a million
bench rows could never be removed from it. Measures:

* per-event appends (one transaction per event, the consumer's path);
* batched appends (the same `append_in`, 1,000 events per transaction) up to N;
* verification from genesis over all N rows, and from a checkpoint near the head.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
import uuid

import asyncpg

from agora import config
from agora.config import Settings
from contracts import full_name
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.orders.v1 import OrderPlaced
from workers.audit.chain import ChainWriter, Incoming, append_in
from workers.audit.checkpoints import sign_head
from workers.audit.envelopes import check
from workers.audit.signing import CheckpointSigner
from workers.audit.verification import verify_chain

DB = "audit_bench"
BATCH = 1000


def incoming(n: int) -> Incoming:
    order_id = f"order-{n // 8}"  # eight events per order, like a saga
    payload = OrderPlaced(order_id=order_id, customer_id="c-1")
    envelope = EventEnvelope(
        event_id=str(uuid.uuid4()),
        event_type="orders.OrderPlaced",
        aggregate_type="order",
        aggregate_id=order_id,
        sequence=n % 8 + 1,
        occurred_at=dt.datetime.now(dt.UTC),
        producer="orders",
        traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
        workflow_id=f"order-{order_id}",
        run_id=str(uuid.uuid4()),
        payload=bytes(payload),
        payload_type=full_name(payload),
    )
    return Incoming(check(envelope), bytes(envelope), "orders.events")


async def superuser(settings: Settings, database: str = "postgres") -> asyncpg.Connection:
    return await asyncpg.connect(
        host=str(settings.state_dir / "postgres" / "run"),
        port=settings.ports["postgres"],
        user="postgres",
        database=database,
    )


async def fresh_database(settings: Settings) -> None:
    conn = await superuser(settings)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {DB} OWNER audit")
        await conn.execute(f"REVOKE ALL ON DATABASE {DB} FROM PUBLIC")
        await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {DB} TO audit")
    finally:
        await conn.close()
    conn = await superuser(settings, DB)
    try:
        await conn.execute("GRANT USAGE, CREATE ON SCHEMA public TO audit, audit_owner")
    finally:
        await conn.close()
    from yoyo import get_backend, read_migrations

    from agora.db import migrations_dir

    dsn = settings.db_dsn("audit").rsplit("/", 1)[0] + f"/{DB}"
    backend = get_backend(dsn)
    with backend.lock():
        backend.apply_migrations(backend.to_apply(read_migrations(str(migrations_dir("audit")))))


async def drop_database(settings: Settings) -> None:
    conn = await superuser(settings)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    finally:
        await conn.close()


async def run(settings: Settings, events: int, single: int) -> dict[str, float]:
    await fresh_database(settings)
    dsn = settings.db_dsn("audit").rsplit("/", 1)[0] + f"/{DB}"
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    assert pool is not None
    results: dict[str, float] = {"events": events}
    try:
        writer = ChainWriter(pool)
        started = time.perf_counter()
        for n in range(single):
            await writer.append([incoming(n)])
        results["single_event_appends_per_s"] = single / (time.perf_counter() - started)

        appended, build_s, insert_s = single, 0.0, 0.0
        signer = CheckpointSigner(bytes(range(32)))
        signed = False
        while appended < events:
            t0 = time.perf_counter()
            batch = [incoming(n) for n in range(appended, min(appended + BATCH, events))]
            t1 = time.perf_counter()
            async with pool.acquire() as conn, conn.transaction():
                await append_in(conn, batch)
            insert_s += time.perf_counter() - t1
            build_s += t1 - t0
            appended += len(batch)
            if appended >= events - 10 * BATCH and not signed:
                await sign_head(pool, signer, "bench-near-head")
                signed = True
        results["batched_appends_per_s"] = (events - single) / insert_s
        results["building_envelopes_s"] = build_s

        async with pool.acquire() as conn:
            # Every partition, the default one included, is a child in pg_inherits.
            results["log_size_mb"] = (
                sum(
                    r["s"]
                    for r in await conn.fetch(
                        "SELECT pg_total_relation_size(inhrelid) AS s FROM pg_inherits"
                        " WHERE inhparent = 'audit_log'::regclass"
                    )
                )
                / 2**20
            )
        t0 = time.perf_counter()
        full = await verify_chain(pool, signer.public_key, from_genesis=True)
        results["verify_from_genesis_s"] = time.perf_counter() - t0
        assert full.ok and full.records_checked == events, full
        t0 = time.perf_counter()
        recent = await verify_chain(pool, signer.public_key)
        results["verify_from_checkpoint_s"] = time.perf_counter() - t0
        results["verify_from_checkpoint_rows"] = recent.records_checked
        assert recent.ok, recent
    finally:
        await pool.close()
        await drop_database(settings)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=2000, help="per-event appends first")
    args = parser.parse_args()
    results = asyncio.run(run(config.load(service="audit"), args.events, args.single))
    print(json.dumps({k: round(v, 2) for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
