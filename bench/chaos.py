"""`python -m bench.chaos` (`make chaos`): faults injected one by one under a steady load.

Against the platform of the current profile (whatever of it is not running is
started first with `python -m stack up --platform`): a bounded load of orders,
price changes, product reads and searches flows through the gateway
(bench/chaos_load.py) while, in turn, the orders, payments and inventory
workers, the gateway, Kafka, Elasticsearch, Redis and the Temporal dev server
are SIGKILLed and PostgreSQL is killed -9, each brought back with `python -m
stack up <component>` and followed by a quiet window. After a drain the
invariants are checked from the stores (bench/invariants.py) and the report is
written to reports/chaos-<UTC>.md and .json. Exit status 1 when an invariant
fails.

`--only svc-orders redis` runs a subset of the faults (stack component names).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import uvloop

from agora import config, temporal
from agora.config import Settings
from agora.leave import run_and_leave
from agora.logs import setup_logging
from bench import chaos_report
from bench.auth import _session_token, sign_in
from bench.chaos_faults import FULL_SEQUENCE, Fault, full_sequence, stack_up
from bench.chaos_load import Catalog, Credentials, Mix, SteadyLoad
from bench.chaos_report import ChaosResult, FaultRecord, recovery, window
from bench.invariants import RunFacts, check_all, stock_levels
from stack.base import Context
from workers.catalog.seed import generate, import_all
from workers.identity.admin import DEMO_ADMIN_EMAIL, demo_password_file, ensure_demo_admin

CATALOG_PRODUCTS = 2_000
ORDER_SKUS = 6
ORDER_STOCK = 100_000  # ample: every order should complete, so any rejection is a finding
Progress = Callable[[str], None]


def say(line: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {line}", flush=True)


async def inject(
    load: SteadyLoad,
    faults: list[Fault],
    *,
    down_s: float,
    quiet_s: float,
    recover_within_s: float = 90.0,
    progress: Progress = say,
) -> list[FaultRecord]:
    """Each fault in turn under the running load: kill, wait, restore, wait for clients, quiet."""
    records = []
    for fault in faults:
        progress(f"{fault.name}: now")
        record = FaultRecord(fault.name, killed_at=time.time())
        await asyncio.to_thread(fault.kill)
        await asyncio.sleep(down_s)
        try:
            await asyncio.to_thread(fault.restore)
        except Exception as error:  # reported, and the invariants will show the damage
            record.restore_error = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        record.back_at = time.time()
        for _ in range(int(recover_within_s / 0.2)):  # until the clients see it work again
            if load.first_ok("order", record.back_at) is not None:
                break
            await asyncio.sleep(0.2)
        first = load.first_ok("order", record.back_at)
        progress(
            f"{fault.name}: back after {record.back_at - record.killed_at:.1f}s"
            + (
                f", first order OK after {first - record.killed_at:.1f}s"
                if first
                else ", no order OK"
            )
            + (f" (restore failed: {record.restore_error})" if record.restore_error else "")
        )
        await asyncio.sleep(quiet_s)
        records.append(record)
    return records


def settle_records(load: SteadyLoad, records: list[FaultRecord], quiet_s: float) -> None:
    """Recovery per kind, from every attempt (the in-flight ones have ended by now)."""
    for record in records:
        horizon = record.back_at + quiet_s
        record.recovered = {
            kind: t for kind, t in recovery(load.requests, record.back_at).items() if t <= horizon
        }


# Set-up through the gateway --------------------------------------------------------------


async def credentials(settings: Settings, base: str, customers: list[str]) -> Credentials:
    """A new customer account and the local demo admin, signed in through the gateway."""
    await ensure_demo_admin(settings)
    admin_password = demo_password_file(settings).read_text().strip()

    async def renew(creds: Credentials) -> None:
        creds.customer_id, creds.customer = await _session_token(base)
        customers.append(creds.customer_id)
        async with aiohttp.ClientSession() as http:
            creds.admin = await sign_in(http, base, DEMO_ADMIN_EMAIL, admin_password)

    creds = Credentials(customer="", admin="", customer_id="", renew=renew)
    await renew(creds)
    return creds


async def order_skus(base: str, admin: str, run: str) -> list[str]:
    """Products of this run only, with ample stock: their stock is the run's alone."""
    headers = {"Authorization": f"Bearer {admin}"}
    skus = [f"CHAOS-{run}-{n}" for n in range(ORDER_SKUS)]
    async with aiohttp.ClientSession(headers=headers) as http:
        for n, sku in enumerate(skus):
            product = {
                "sku": sku,
                "title": f"Chaos test item {n}",
                "description": "Ordered by the chaos run",
                "brand": "Agora",
                "category": "test/chaos",
                "attributes": {},
                "price": {"amount_minor": 1000 + 250 * n, "currency": "EUR"},
            }
            async with http.post(f"{base}/v1/admin/products", json=product) as response:
                assert response.status == 201, await response.text()
            async with http.post(
                f"{base}/v1/admin/inventory/{sku}/restock", json={"quantity": ORDER_STOCK}
            ) as response:
                assert response.status == 200, await response.text()
    return skus


async def initial_stock(settings: Settings, skus: list[str]) -> dict[str, int]:
    levels = await stock_levels(settings, skus)
    assert all(reserved == 0 for _, reserved in levels.values()), levels
    return {sku: on_hand for sku, (on_hand, _) in levels.items()}


# The run ----------------------------------------------------------------------------------


async def run(settings: Settings, args: argparse.Namespace) -> ChaosResult:
    started = datetime.now(UTC)
    base = f"http://{settings.host}:{settings.ports['gateway']}"
    say(f"catalog: {CATALOG_PRODUCTS} products (imported unless present)")
    products = generate(CATALOG_PRODUCTS)
    await import_all(await temporal.connect(settings), products, 42)
    customers: list[str] = []
    creds = await credentials(settings, base, customers)
    skus = await order_skus(base, creds.admin, uuid.uuid4().hex[:8])
    stock = await initial_stock(settings, skus)
    rng = random.Random(5)
    seeded = [p.sku for p in products]
    catalog = Catalog(skus, rng.sample(seeded, 40), rng.sample(seeded, 300))
    mix = Mix(
        orders_per_s=args.orders_per_s,
        prices_per_s=args.prices_per_s,
        reads_per_s=args.reads_per_s,
        searches_per_s=args.searches_per_s,
    )
    load = SteadyLoad(base, creds, catalog, mix)
    ctx = Context(settings)
    faults = full_sequence(ctx, args.only)
    say(
        f"load: {mix.orders_per_s} orders/s, {mix.prices_per_s} price changes/s,"
        f" {mix.reads_per_s} reads/s, {mix.searches_per_s} searches/s through {base}"
    )
    await load.start()
    warm_from = time.time()
    await asyncio.sleep(args.warmup_s)
    baseline_window = (warm_from, time.time())
    records = await inject(load, faults, down_s=args.down_s, quiet_s=args.quiet_s)
    say("load: stopping (requests in flight finish or give up)")
    await load.stop()
    settle_records(load, records, args.quiet_s)
    facts = RunFacts(
        started_at=started,
        customer_ids=customers,
        accepted_orders=load.accepted_orders(),
        initial_stock=stock,
        updated_skus=sorted(load.updated_skus),
    )
    say(f"invariants: checking from the stores (up to {args.within_s:.0f}s for things to settle)")
    verdicts = await check_all(settings, facts, within_s=args.within_s, progress=say)
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "profile": settings.profile,
        "cpus": os.cpu_count(),
        "mix": (
            f"{mix.orders_per_s} orders/s, {mix.prices_per_s} price changes/s,"
            f" {mix.reads_per_s} product reads/s, {mix.searches_per_s} searches/s"
            f" (at most {mix.max_in_flight} in flight, client budget {mix.budget_s:.0f} s)"
        ),
        "down_s": args.down_s,
        "quiet_s": args.quiet_s,
        "order_skus": skus,
    }
    return ChaosResult(
        started=started,
        meta=meta,
        baseline=window(load.requests, *baseline_window),
        faults=[(r, window(load.requests, r.killed_at, r.window_end)) for r in records],
        totals=chaos_report.totals(load.requests),
        verdicts=verdicts,
    )


def main(argv: list[str] | None = None) -> int:
    # Library warnings (the SDK's, aiohttp's) and a refused setting as JSON lines.
    setup_logging("bench-chaos")
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument(
        "--only", nargs="*", choices=[name for name, _ in FULL_SEQUENCE], metavar="component"
    )
    parser.add_argument("--down-s", type=float, default=3.0, help="time a killed thing stays down")
    parser.add_argument("--quiet-s", type=float, default=20.0, help="steady load after each fault")
    parser.add_argument("--warmup-s", type=float, default=15.0)
    parser.add_argument("--within-s", type=float, default=240.0, help="invariants deadline")
    parser.add_argument("--orders-per-s", type=float, default=2.0)
    parser.add_argument("--prices-per-s", type=float, default=1.0)
    parser.add_argument("--reads-per-s", type=float, default=4.0)
    parser.add_argument("--searches-per-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    settings = config.load(service="bench")
    setup_logging("bench-chaos", settings.log_level)
    # The stack's Kafka health probe retries while the broker restarts: no need to shout.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    say(f"platform ({settings.profile}): starting whatever is not running")
    stack_up(show=True)
    result = uvloop.run(run(settings, args))
    stem = chaos_report.write(result)
    print()
    print(chaos_report.markdown(result))
    say(f"written: {stem}.md and {stem}.json; verdict {'PASS' if result.ok else 'FAIL'}")
    if not result.ok:
        say("failed: " + "; ".join(result.failures))
    return 0 if result.ok else 1


if __name__ == "__main__":
    run_and_leave(main)
