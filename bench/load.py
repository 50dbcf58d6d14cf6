"""`python -m bench.load` (also `python -m bench load`, `make load`): the platform's
gateway under an open-model load at stepped rates, until p99 passes the limit.

* Open model: requests are due at a constant arrival rate whatever the answers
  do, and each latency counts from when the request was due, so queueing shows
  (a closed loop of N workers would slow down with the server and hide it).
* The mix (bench.load_plan.DEFAULT_MIX), per 24 requests: 10 product reads
  (Zipf-popular skus of the seeded catalog), 4 category listings, 6 searches,
  2 orders placed (Idempotency-Key, 1-2 lines of 1-2 units) and 2 orders read
  back, spread over a pool of signed-up customers.
* Steps: start rate, x factor each step; each step has a warm-up (not measured)
  and a measured window. The run stops after the first step whose p99 passes
  the limit or that has any error; the knee is the highest step held before it.
* At every step: the gateway's Server-Timing stages per request kind and the CPU
  seconds of each process of the stack (and of this generator) over the window.

Needs the platform running and seeded (`make run`):
it loads the stack's own gateway with its configured limits and tracing.
Writes reports/load-<UTC>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import uvloop

from agora import config, temporal
from agora.config import Settings
from agora.leave import run_and_leave
from agora.logs import setup_logging
from bench import reports
from bench.load_client import Customer, Workload, renew_due, sign_up
from bench.load_cpu import CpuMeter, window
from bench.load_plan import (
    DEFAULT_MIX,
    Sample,
    StepSummary,
    arrival_offsets,
    first_failed,
    kinds,
    knee,
    rate_steps,
    summarize,
)
from bench.load_report import markdown
from bench.processes import http_ok
from workers.catalog.seed import generate
from workflows.inventory import TASK_QUEUE as INVENTORY_QUEUE
from workflows.inventory import RestockInput, RestockWorkflow, restock_workflow_id

STOCK_FLOOR = 100_000  # an order sku below this many available units is topped up
STOCK_TOP_UP = 1_000_000


@dataclass(frozen=True)
class Options:
    start_rate: float
    factor: float
    max_rate: float
    max_steps: int
    warmup_s: float
    step_s: float
    p99_ms: float
    customers: int
    order_skus: int
    products: int
    timeout_s: float
    seed: int


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--start-rate", type=float, default=20.0, help="first step, req/s (default 20)")
    add("--factor", type=float, default=1.25, help="rate multiplier per step (default 1.25)")
    add("--max-rate", type=float, default=5_000.0, help="never offer more (default 5000)")
    add("--max-steps", type=int, default=25, help="at most this many steps (default 25)")
    add("--warmup", type=float, default=15.0, help="unmeasured seconds per step (default 15)")
    add("--step", type=float, default=60.0, help="measured seconds per step (default 60)")
    add("--p99-ms", type=float, default=200.0, help="the p99 limit a step must hold (200)")
    add("--customers", type=int, default=32, help="signed-up customers to spread over (32)")
    add("--order-skus", type=int, default=100, help="skus orders are placed for (100)")
    add("--products", type=int, default=10_000, help="the seeded catalog size (10000)")
    add("--timeout", type=float, default=10.0, help="client timeout per request, s (10)")
    add("--seed", type=int, default=7, help="random seed of the request sequence (7)")
    args = parser.parse_args(argv)
    if args.step <= 0 or args.warmup < 0 or args.customers < 1 or args.order_skus < 2:
        parser.error("need --step > 0, --warmup >= 0, --customers >= 1, --order-skus >= 2")
    return Options(
        start_rate=args.start_rate,
        factor=args.factor,
        max_rate=args.max_rate,
        max_steps=args.max_steps,
        warmup_s=args.warmup,
        step_s=args.step,
        p99_ms=args.p99_ms,
        customers=args.customers,
        order_skus=args.order_skus,
        products=args.products,
        timeout_s=args.timeout,
        seed=args.seed,
    )


async def _stock(
    settings: Settings, http: aiohttp.ClientSession, base: str, token: str, skus: list[str]
) -> int:
    """Top up the order skus so no order is refused for stock; returns how many were."""
    headers = {"Authorization": f"Bearer {token}"}
    low = []
    for sku in skus:
        async with http.get(f"{base}/v1/inventory/{sku}", headers=headers) as response:
            available = (await response.json())["available"] if response.status == 200 else 0
        if available < STOCK_FLOOR:
            low.append(sku)
    if low:
        client = await temporal.connect(settings, sdk_metrics=False)
        inputs = [RestockInput(f"load:{uuid.uuid4()}", sku, STOCK_TOP_UP) for sku in low]
        await asyncio.gather(
            *(
                client.execute_workflow(
                    RestockWorkflow.run,
                    data,
                    id=restock_workflow_id(data.key),
                    task_queue=INVENTORY_QUEUE,
                )
                for data in inputs
            )
        )
    return len(low)


async def _catalog_seeded(http: aiohttp.ClientSession, base: str, token: str, sku: str) -> bool:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{base}/v1/products/{sku}", headers=headers) as response:
        return response.status == 200


async def _step(
    http: aiohttp.ClientSession,
    workload: Workload,
    sequence: Iterator[str],
    meter: CpuMeter,
    rate: float,
    options: Options,
) -> StepSummary:
    """One step: warm-up then the measured window, one continuous arrival stream."""
    start = time.monotonic() + 0.05
    window_start = start + options.warmup_s
    cpu: dict[str, dict[str, float]] = {}

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, window_start - time.monotonic()))
        cpu["before"] = await asyncio.to_thread(meter.snapshot)
        await asyncio.sleep(max(0.0, window_start + options.step_s - time.monotonic()))
        cpu["after"] = await asyncio.to_thread(meter.snapshot)

    sampler = asyncio.create_task(sample_cpu())
    tasks: list[asyncio.Task[Sample]] = []
    for offset in arrival_offsets(rate, options.warmup_s + options.step_s):
        due = start + offset
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(workload.fire(http, next(sequence), due)))
    await sampler
    samples = await asyncio.gather(*tasks)
    return summarize(rate, window_start, options.step_s, samples, window(**cpu))


def _progress(n: int, step: StepSummary, p99_ms: float) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in step.errors.items()) or "none"
    verdict = "held" if step.held(p99_ms) else "NOT held"
    return (
        f"step {n:>2}: offered {step.offered_rate:7.1f} req/s, achieved"
        f" {step.achieved_rate:7.1f}, p50 {step.overall.p50_ms:7.1f} ms,"
        f" p95 {step.overall.p95_ms:7.1f}, p99 {step.overall.p99_ms:7.1f},"
        f" errors {errors} -> {verdict}"
    )


async def run(settings: Settings, options: Options) -> dict[str, Any]:
    base = f"http://{settings.host}:{settings.ports['gateway']}"
    if not http_ok(f"{base}/readyz"):
        raise SystemExit(f"no gateway at {base}: start the platform first (make run)")
    rng = random.Random(options.seed)
    skus = [p.sku for p in generate(options.products)]
    order_skus = random.Random(options.seed).sample(skus, options.order_skus)
    meter = CpuMeter(settings)
    # No connection cap: an open model must not queue requests inside the client.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector) as http:
        print(f"signing up {options.customers} customers ...", file=sys.stderr, flush=True)
        customers: list[Customer] = await sign_up(http, base, options.customers)
        if not await _catalog_seeded(http, base, customers[0].token, skus[-1]):
            raise SystemExit(f"{skus[-1]} not found: seed the catalog (make seed)")
        restocked = await _stock(settings, http, base, customers[0].token, order_skus)
        workload = Workload(base, customers, skus, order_skus, rng, options.timeout_s)
        sequence = kinds(DEFAULT_MIX, rng)
        steps: list[StepSummary] = []
        rates = rate_steps(options.start_rate, options.factor, options.max_rate, options.max_steps)
        for n, rate in enumerate(rates, start=1):
            await renew_due(http, base, customers)
            step = await _step(http, workload, sequence, meter, rate, options)
            steps.append(step)
            print(_progress(n, step, options.p99_ms), file=sys.stderr, flush=True)
            if not step.held(options.p99_ms):
                break
    held = knee(steps, options.p99_ms)
    return {
        "options": asdict(options),
        "mix": DEFAULT_MIX,
        "restocked_skus": restocked,
        "steps": steps,
        "knee": held,
        "failed": first_failed(steps, options.p99_ms),
    }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, StepSummary):
        return {**asdict(value), "error_count": value.error_count}
    raise TypeError(type(value))


def main(argv: list[str] | None = None) -> int:
    # Library warnings (the SDK's, aiohttp's) and a refused setting as JSON lines.
    setup_logging("bench-load")
    options = parse(argv)
    settings = config.load(service="bench")
    setup_logging("bench-load", settings.log_level)
    started = datetime.now(UTC)
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "profile": settings.profile,
        "cpus": os.cpu_count() or 1,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "gateway": f"http://{settings.host}:{settings.ports['gateway']}",
        "tracing": settings.tracing_enabled,
        "trace_sample_ratio": settings.trace_sample_ratio,
        "rate_limits": settings.rate_limits,
    }
    result = uvloop.run(run(settings, options))
    text = markdown(result, meta)
    stem = reports.write("load", started, text, {"meta": meta, **result}, default=_jsonable)
    print(text)
    print(f"written: {stem}.md and {stem}.json")
    return 0 if result["knee"] is not None else 1


if __name__ == "__main__":
    run_and_leave(main)
