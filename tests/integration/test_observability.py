"""Observability end to end, on the real platform after a small bounded load.

Every service runs as a process and the gateway as `python -m gateway`; a client
places orders, reads and searches the catalog and makes a few 4xx mistakes. Then:
one order is one trace in Jaeger from the gateway through the saga to the audit
consumer; the log view prints that trace's lines from every process it crossed;
no metric label carries an id; every dashboard query answers with data.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from argon2 import PasswordHasher
from prometheus_client.parser import text_string_to_metric_families

from agora import temporal
from agora.config import REPO_ROOT, SERVICES, Settings
from tests.integration.catalogkit import product_body
from tests.integration.conftest import Services
from tests.integration.observabilitykit import (
    GatewayProcess,
    jaeger_trace,
    looks_like_an_id,
    prometheus_query,
    scrape,
    services_of,
    tag,
)
from tests.integration.waiting import eventually
from workers.payments.psp_sim import tokenize
from workflows.identity import (
    TASK_QUEUE,
    RegisterAccountInput,
    RegisterAccountWorkflow,
    register_workflow_id,
)

pytestmark = pytest.mark.integration

PASSWORD = "observability password 1"
OK_CARD = "4242424242424242"
DECLINED_CARD = "4000000000009995"
FLAKY_CARD = "4000000000000119"  # the simulated PSP fails it transiently 3 times
DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "dashboards"
# Labels that name the process (one value per process, not per request) may hold ids.
PROCESS_LABELS = frozenset({"instance", "service_instance_id", "job"})
# Dashboard panels that may legitimately be empty after the load run, and why.
# Prefer `or vector(0)` in the dashboard; list a panel here only when an empty
# answer is the honest one (e.g. a ratio whose denominator does not exist yet).
MAY_BE_EMPTY: dict[str, str] = {}


@dataclass
class Traffic:
    """What the load run did: the order to follow, and every id it used."""

    base: str
    trace_id: str = ""
    order_id: str = ""
    ids: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def gateway(settings: Settings, services: Services) -> Iterator[GatewayProcess]:
    for service in SERVICES:
        services(service)
    process = GatewayProcess(settings)
    process.start()
    yield process
    process.stop()


async def _admin_token(settings: Settings, http: aiohttp.ClientSession, base: str) -> str:
    """An admin registered as an operator would (the workflow), signed in through the API."""
    email = f"obs-{uuid.uuid4().hex[:10]}@example.com"
    client = await temporal.connect(settings)
    await client.execute_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(
            account_id=str(uuid.uuid4()),
            email=email,
            display_name="Observer",
            password_hash=await asyncio.to_thread(PasswordHasher().hash, PASSWORD),
            roles=["admin"],
        ),
        id=register_workflow_id(email),
        task_queue=TASK_QUEUE,
    )
    async with http.post(
        f"{base}/v1/auth/signin", json={"email": email, "password": PASSWORD}
    ) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["access_token"]
        return token


async def _round(
    http: aiohttp.ClientSession, traffic: Traffic, auth: dict[str, str]
) -> tuple[str, str]:
    """One round of bounded load; returns the placed order's id and trace id."""
    base = traffic.base
    sku = f"OBS-{uuid.uuid4().hex[:10]}"
    traffic.ids.add(sku)
    async with http.post(
        f"{base}/v1/admin/products",
        json=product_body(sku, price={"amount_minor": 1200, "currency": "EUR"}),
        headers=auth,
    ) as response:
        assert response.status == 201, await response.text()
    async with http.post(
        f"{base}/v1/admin/inventory/{sku}/restock", json={"quantity": 5}, headers=auth
    ) as response:
        assert response.status == 200, await response.text()
    for _ in range(5):  # one miss, then cache hits
        async with http.get(f"{base}/v1/products/{sku}", headers=auth) as response:
            assert response.status == 200, await response.text()
    for query in ("trail", "shoe"):
        async with http.get(f"{base}/v1/search", params={"q": query}, headers=auth) as response:
            assert response.status == 200, await response.text()
    # Some 4xx: unknown product, no token, a garbage token, an order that is no order.
    mistakes = [
        ("GET", f"/v1/products/NOPE-{uuid.uuid4().hex[:8]}", auth, 404),
        ("GET", "/v1/me", {}, 401),
        ("GET", "/v1/me", {"Authorization": "Bearer not.a.jwt"}, 401),
        ("POST", "/v1/orders", auth, 422),
    ]
    for method, path, headers, status in mistakes:
        async with http.request(method, f"{base}{path}", headers=headers, json={}) as response:
            assert response.status == status, (path, await response.text())

    async def place(card: str) -> tuple[str, str]:
        key = f"obs-{uuid.uuid4()}"
        async with http.post(
            f"{base}/v1/orders",
            json={
                "lines": [{"sku": sku, "quantity": 1}],
                "currency": "EUR",
                "payment": {"card_token": tokenize(card, 12, 2030).token},
            },
            headers={**auth, "Idempotency-Key": key, "X-Request-Timeout": "30000"},
        ) as response:
            assert response.status == 201, await response.text()
            order_id: str = (await response.json())["order_id"]
            trace_id = response.headers["X-Trace-Id"]
        traffic.ids.update({key, order_id, trace_id})
        return order_id, trace_id

    async def finished(order_id: str) -> str | None:
        async with http.get(f"{base}/v1/orders/{order_id}", headers=auth) as response:
            if response.status != 200:
                return None
            status: str = (await response.json())["status"]
            return status if status in ("COMPLETED", "REJECTED", "CANCELLED") else None

    order_id, trace_id = await place(OK_CARD)
    declined_id, _ = await place(DECLINED_CARD)  # a failed saga, for the failure panels
    # A decline is a business rejection, BENIGN, which the SDK's activity failure
    # counter leaves out; a transient PSP failure, retried, is what that panel counts.
    flaky_id, _ = await place(FLAKY_CARD)
    assert await eventually(lambda: finished(order_id), within=90, what="the order") == "COMPLETED"
    assert (
        await eventually(lambda: finished(declined_id), within=90, what="the declined order")
        == "REJECTED"
    )
    assert (
        await eventually(lambda: finished(flaky_id), within=90, what="the flaky card's order")
        == "COMPLETED"
    )
    return order_id, trace_id


# A counter of each process the load touches: Prometheus holds its current value
# once it scraped that process after the round.
CAUGHT_UP = {
    "gateway": "gateway_requests_total",
    "catalog": "agora_catalog_cache_lookups_total",
    "orders": "agora_order_saga_total",
}


def _prometheus_caught_up(settings: Settings) -> bool:
    """Prometheus scraped every process after the round, and the Temporal SDK's activity
    metrics arrived through the collector."""
    for service, metric in CAUGHT_UP.items():
        port = (
            settings.ports["gateway_side"] if service == "gateway" else settings.side_port(service)
        )
        exposed = sum(
            sample.value
            for family in text_string_to_metric_families(
                scrape(f"http://{settings.host}:{port}/metrics")
            )
            for sample in family.samples
            if sample.name == metric
        )
        stored = prometheus_query(settings, f'sum({metric}{{job="agora",service="{service}"}})')
        values = [float(r["value"][1]) for r in stored.get("data", {}).get("result", [])]
        if not exposed or values != [exposed]:
            return False
    activity = prometheus_query(
        settings, "sum(temporal_activity_execution_latency_milliseconds_count)"
    )
    return bool(activity.get("data", {}).get("result"))


@pytest.fixture(scope="module")
async def traffic(settings: Settings, gateway: GatewayProcess) -> AsyncIterator[Traffic]:
    """Two rounds of load with a Prometheus scrape between them, so that every rate()
    on the dashboards has two different samples to work with."""
    traffic = Traffic(base=f"http://{settings.host}:{settings.ports['gateway']}")
    async with aiohttp.ClientSession() as http:
        token = await _admin_token(settings, http, traffic.base)
        auth = {"Authorization": f"Bearer {token}"}
        traffic.order_id, traffic.trace_id = await _round(http, traffic, auth)
        await eventually(
            lambda: asyncio.to_thread(_prometheus_caught_up, settings),
            within=60,
            what="Prometheus to scrape the first round",
        )
        await _round(http, traffic, auth)
    yield traffic


# ---- traces --------------------------------------------------------------------

TRACE_SERVICES = {"gateway", "orders", "inventory", "payments", "audit"}


async def test_an_order_is_one_trace_from_the_gateway_through_the_saga_to_the_audit_consumer(
    settings: Settings, traffic: Traffic
) -> None:
    async def whole() -> dict[str, list[dict[str, Any]]] | None:
        grouped = services_of(await asyncio.to_thread(jaeger_trace, settings, traffic.trace_id))
        return grouped if TRACE_SERVICES <= set(grouped) else None

    try:
        by_service = await eventually(whole, within=90, what="the trace to reach every service")
    except AssertionError:
        seen = services_of(jaeger_trace(settings, traffic.trace_id))
        pytest.fail(f"trace {traffic.trace_id} has only {sorted(seen)}, wanted {TRACE_SERVICES}")

    def names(service: str) -> set[str]:
        return {s["operationName"] for s in by_service[service]}

    # The gateway's server span, and its Temporal client span that starts the saga.
    server = [s for s in by_service["gateway"] if tag(s, "span.kind") == "server"]
    assert [s["operationName"] for s in server] == ["POST /v1/orders"]
    assert "StartUpdateWithStartWorkflow:Order" in names("gateway"), names("gateway")
    # The workflow runs on the orders worker and its activities on each service's queue.
    assert "RunWorkflow:Order" in names("orders"), names("orders")
    for service in ("inventory", "payments"):
        assert any(n.startswith("RunActivity:") for n in names(service)), names(service)
    # The audit consumer continued the trace of the activity that wrote the event and
    # is linked to it (OpenTelemetry messaging conventions).
    consumer = [s for s in by_service["audit"] if tag(s, "span.kind") == "consumer"]
    assert consumer, names("audit")
    assert all(s["operationName"].startswith("process ") for s in consumer)
    span_ids = {s["spanID"] for spans in by_service.values() for s in spans}
    for span in consumer:
        # Jaeger shows the parent that is also the link as one FOLLOWS_FROM reference.
        # A batch's span also links to its other events' producers, in their own traces.
        referenced = {r["spanID"] for r in span["references"] if r["traceID"] == span["traceID"]}
        assert referenced and referenced <= span_ids, "the consumer span is not in the trace"


# ---- logs ----------------------------------------------------------------------


def _log_view(settings: Settings, trace_id: str) -> list[str]:
    """What `make logs TRACE=<id>` prints (the same module, run as a process)."""
    done = subprocess.run(
        [sys.executable, "-m", "agora.logview", trace_id],
        capture_output=True,
        text=True,
        env={**os.environ, "AGORA_PROFILE": settings.profile},
        check=False,
    )
    return done.stdout.splitlines()


async def test_the_log_view_prints_an_orders_lines_from_every_process_it_crossed(
    settings: Settings, traffic: Traffic
) -> None:
    wanted = {"gateway", "orders", "inventory", "payments"}

    async def complete() -> list[str] | None:
        lines = await asyncio.to_thread(_log_view, settings, traffic.trace_id)
        return lines if wanted <= {line.split()[1] for line in lines} else None

    lines = await eventually(
        complete, within=30, what=f"log lines of every service for {traffic.trace_id}"
    )
    stamps = [line.split()[0] for line in lines]
    assert stamps == sorted(stamps), "the log view is not in time order"
    gateway = [line for line in lines if line.split()[1] == "gateway"]
    assert any('"route": "/v1/orders"' in line and '"status": 201' in line for line in gateway)
    orders = [line for line in lines if line.split()[1] == "orders"]
    assert any(f"order-{traffic.order_id}" in line for line in orders), orders


# ---- metrics -------------------------------------------------------------------


def _metric_endpoints(settings: Settings) -> dict[str, str]:
    host = settings.host
    endpoints = {
        service: f"http://{host}:{settings.side_port(service)}/metrics" for service in SERVICES
    }
    endpoints["gateway"] = f"http://{host}:{settings.ports['gateway_side']}/metrics"
    # What the services push over OTLP, the Temporal SDK's metrics among it.
    endpoints["collector"] = f"http://{host}:{settings.ports['otelcol_prom']}/metrics"
    return endpoints


def test_no_metric_label_carries_an_id(settings: Settings, traffic: Traffic) -> None:
    offenders: list[str] = []
    series = 0
    for source, url in _metric_endpoints(settings).items():
        for family in text_string_to_metric_families(scrape(url)):
            for sample in family.samples:
                series += 1
                for label, value in sample.labels.items():
                    if label in PROCESS_LABELS:
                        continue
                    if looks_like_an_id(value) or value in traffic.ids:
                        offenders.append(f"{source}: {sample.name}{{{label}={value!r}}}")
    assert series > 500, "too few series scraped to mean anything"
    assert not offenders, "high-cardinality labels:\n" + "\n".join(sorted(set(offenders))[:40])


def _has(text: str, name: str, **labels: str) -> bool:
    return any(
        sample.name == name and labels.items() <= sample.labels.items()
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )


# (where, metric, labels) for each metric the issue asks for; "collector" holds what
# the processes push over OTLP, the Temporal SDK's own metrics among it.
ISSUE_METRICS = [
    ("gateway", "gateway_requests_total", {"route": "/v1/products/{sku}", "status": "200"}),
    ("gateway", "gateway_request_duration_seconds_bucket", {"route": "/v1/orders"}),
    ("gateway", "gateway_rejections_total", {"type": "token-malformed"}),
    ("gateway", "gateway_rejections_total", {"type": "token-missing"}),
    ("gateway", "gateway_requests_in_flight", {}),  # the gateway autoscaler reads it
    ("catalog", "agora_catalog_cache_lookups_total", {"outcome": "hit"}),
    ("catalog", "agora_catalog_cache_lookups_total", {"outcome": "miss"}),
    ("catalog", "rpc_server_duration_seconds_count", {"rpc_code": "OK"}),
    ("orders", "agora_order_saga_total", {"outcome": "completed"}),
    ("orders", "agora_order_saga_total", {"outcome": "rejected"}),
    ("orders", "agora_order_saga_confirm_duration_seconds_bucket", {"le": "1.0"}),
    ("orders", "agora_outbox_backlog", {"service": "orders"}),
    ("orders", "agora_outbox_oldest_age_seconds", {"service": "orders"}),
    ("audit", "agora_kafka_consumer_lag", {"group": "audit", "topic": "orders.events"}),
    ("audit", "agora_kafka_consumed_total", {"group": "audit", "topic": "orders.events"}),
    ("collector", "temporal_activity_execution_latency_milliseconds_bucket", {}),
    ("collector", "temporal_workflow_completed_total", {"job": "agora/orders"}),
]


def test_the_metrics_the_issue_names_are_exposed(settings: Settings, traffic: Traffic) -> None:
    """RED per route / method / activity, saga, outbox, lag, cache, rejections, SDK metrics."""
    text = {source: scrape(url) for source, url in _metric_endpoints(settings).items()}
    missing = [
        f"{source}: {name}{labels}"
        for source, name, labels in ISSUE_METRICS
        if not _has(text[source], name, **labels)
    ]
    assert not missing, missing


# ---- dashboards ----------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) for every target of every dashboard in the repo."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        document = json.loads(path.read_text())
        for panel in document["panels"]:
            for target in panel.get("targets", ()):
                # Template variables as Grafana would expand them with "All" selected.
                expr = target["expr"].replace("$service", ".*").replace("$__rate_interval", "1m")
                queries.append((path.name, panel["title"], expr))
    return queries


def _has_data(answer: dict[str, Any]) -> bool:
    """Some series with a number: a panel of NaN (e.g. a quantile of no rate) shows nothing."""
    result = answer.get("data", {}).get("result", [])
    values = [float(r["value"][1]) for r in result if "value" in r]
    return any(not math.isnan(v) for v in values)


async def test_every_dashboard_query_answers_with_data_after_the_load_run(
    settings: Settings, traffic: Traffic
) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    pending = {q for q in queries if q[1] not in MAY_BE_EMPTY}
    errors: list[str] = []
    deadline = time.monotonic() + 90
    while True:
        for query in sorted(pending):
            answer = await asyncio.to_thread(prometheus_query, settings, query[2])
            if answer.get("status") != "success":
                errors.append(f"{query[0]} / {query[1]}: {answer.get('error')}\n  {query[2]}")
                pending.discard(query)
            elif _has_data(answer):
                pending.discard(query)
        if errors or not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(5)  # the next scrape
    assert not errors, "dashboard queries Prometheus refuses:\n" + "\n".join(errors)
    assert not pending, "dashboard queries without data after the load run:\n" + "\n".join(
        f"{d} / {title}:\n  {expr}" for d, title, expr in sorted(pending)
    )


def test_every_dashboard_metric_name_exists_in_prometheus(
    settings: Settings, traffic: Traffic
) -> None:
    """A misspelt metric name is caught even where an `or vector(0)` hides the empty answer."""
    answer = prometheus_query(settings, 'count by (__name__) ({__name__=~".+"})')
    known = {r["metric"]["__name__"] for r in answer["data"]["result"]}
    unknown = {
        f"{dashboard} / {title}: {name}"
        for dashboard, title, expr in dashboard_queries()
        for name in SELECTOR.findall(expr)
        if name not in known
    }
    assert not unknown, sorted(unknown)


# A metric name in a selector (`name{...}` or `name[5m]`); recording rules (agora:...)
# have neither and exist only once they evaluate to something.
SELECTOR = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_]*)\s*(?=[{[])")
