"""Scenario `tracing`: the read path with tracing at 100% sampling, at 10%, and off, in one run.

GET /v1/products/{sku} (auth, rate limit, gRPC over mTLS to catalog, cache hit
in Redis) through a gateway process that dials its own catalog process; each
pair runs with one AGORA_TRACE_SAMPLE_RATIO:

* 1.0: every request is a trace; the gateway's server span, the gRPC client
  metadata, catalog's server span and its Redis span are recorded and exported
  over OTLP to the collector (and on to Jaeger), as locally and in staging;
* 0.1: production's head sampling;
* 0: tracing off: spans are created but never recorded or exported.

Everything else (metrics, logs at WARNING, limits out of the way) is the same.
The pairs are loaded in turns (ROUNDS rounds of REQUESTS_PER_ROUND each, at
CONCURRENCY), so drift on a shared machine spreads over all of them alike.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from agora import temporal
from agora.config import Settings
from bench.auth import UNTHROTTLED
from bench.catalog import _load, _token
from bench.processes import free_port, http_ok, identity_running, process
from bench.stats import row
from workers.catalog.seed import generate, import_all

VARIANTS = {"100% sampling": "1.0", "10% sampling": "0.1", "off (ratio 0)": "0"}
ROUNDS = 5
REQUESTS_PER_ROUND = 400
CONCURRENCY = 8
PRODUCTS = 50
SEED = 4242  # the bench's own small catalog, apart from the demo seed


def _pair(
    stack: contextlib.ExitStack, settings: Settings, ratio: str, name: str
) -> tuple[str, str]:
    """A catalog and a gateway dialling it, both at `ratio`; the gateway's base URL."""
    logs = settings.state_dir / "logs"
    catalog_grpc, catalog_side = free_port(), free_port()
    gateway, gateway_side = free_port(), free_port()
    env = {
        "AGORA_PROFILE": settings.profile,
        "AGORA_LOG_LEVEL": "WARNING",
        "AGORA_TRACE_SAMPLE_RATIO": ratio,
        "AGORA_PORT_CATALOG_GRPC": str(catalog_grpc),
        "AGORA_PORT_CATALOG_SIDE": str(catalog_side),
    }
    stack.enter_context(
        process(
            f"tracing-catalog-{name}",
            ["-m", "workers", "catalog"],
            f"http://{settings.host}:{catalog_side}/readyz",
            logs,
            env=env,
        )
    )
    time.sleep(1.0)  # the gRPC port opens just after the side port reports ready
    base = f"http://{settings.host}:{gateway}"
    stack.enter_context(
        process(
            f"tracing-gateway-{name}",
            ["-m", "gateway"],
            f"{base}/readyz",
            logs,
            env={
                **env,
                "AGORA_SERVICE": "gateway",
                "AGORA_PORT_GATEWAY": str(gateway),
                "AGORA_PORT_GATEWAY_SIDE": str(gateway_side),
                **{f"AGORA_RATE_LIMIT_{n.upper()}": UNTHROTTLED for n in settings.rate_limits},
            },
        )
    )
    return name, base


async def run(settings: Settings) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        stack.enter_context(identity_running(settings))
        pairs = [_pair(stack, settings, ratio, str(i)) for i, ratio in enumerate(VARIANTS.values())]
        client = await temporal.connect(settings)
        products = generate(PRODUCTS, seed=SEED)
        await import_all(client, products, SEED)  # idempotent: the same rows every run
        headers = {"Authorization": f"Bearer {await _token(pairs[0][1])}"}
        urls = {
            label: [f"{base}/v1/products/{p.sku}" for p in products]
            for label, (_, base) in zip(VARIANTS, pairs, strict=True)
        }
        samples: dict[str, list[float]] = {label: [] for label in VARIANTS}
        for _ in range(ROUNDS):
            for label in VARIANTS:
                latencies, _, _ = await _load(urls[label], headers, REQUESTS_PER_ROUND)
                samples[label] += latencies
        assert all(http_ok(f"{base}/healthz") for _, base in pairs)
    rows = [
        row(
            f"GET /v1/products/{{sku}} cache hit, tracing {label} (gateway + catalog,"
            f" concurrency {CONCURRENCY})",
            samples[label],
        )
        for label in VARIANTS
    ]
    return {"title": "Read path with tracing at 100% and 10% sampling vs off", "rows": rows}
