"""Calls from the gateway to services (grpclib over mTLS) and to Temporal.

Every call goes through `Upstream.call`, which gives it what is left of the
request's own deadline, times it into Server-Timing, counts it, and turns any
failure into a problem through the one table in gateway/failures.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Required, TypedDict, Unpack

from aiohttp import web
from grpclib.exceptions import GRPCError, StreamTerminatedError
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from agora.grpc import Channels
from contracts.agora.audit.v1 import AuditServiceStub
from contracts.agora.catalog.v1 import CatalogServiceStub
from contracts.agora.identity.v1 import IdentityServiceStub
from contracts.agora.inventory.v1 import InventoryServiceStub
from contracts.agora.orders.v1 import OrdersServiceStub
from contracts.agora.payments.v1 import PaymentsServiceStub
from contracts.agora.search.v1 import SearchServiceStub
from gateway import failures
from gateway.context import TIMING, remaining_s
from gateway.metrics import GatewayMetrics
from gateway.problems import Problem

# How long one poll for a workflow's result may wait before it is asked again.
RESULT_POLL = timedelta(seconds=1)


async def workflow_result(handle: WorkflowHandle[Any, Any]) -> Any:
    """The workflow's result, asked for in polls of at most RESULT_POLL until it comes
    (the caller bounds the wait with its deadline). One long poll for the whole deadline
    once missed its wake-up in CI: a catalog write's workflow closed 30 ms after it
    started, its poll slept until the request's 10 s deadline. A fresh poll finds a
    closed workflow at once."""
    while True:
        try:
            return await handle.result(rpc_timeout=RESULT_POLL)
        except RPCError as error:
            # The poll's own timeout: DEADLINE_EXCEEDED from the server, or CANCELLED
            # ("Timeout expired") when the SDK's client gives up first (the
            # time-skipping test server answers so; a server that ignores the
            # client's deadline on this long poll would too).
            timed_out = error.status == RPCStatusCode.DEADLINE_EXCEEDED or (
                error.status == RPCStatusCode.CANCELLED and "timeout" in error.message.lower()
            )
            if not timed_out:
                raise
            # Not closed yet, or its wake-up was missed: ask again.


class StartOptions(TypedDict, total=False):
    """`Upstream.start_workflow`'s keywords (`id`, `task_queue` and `budget_s` required)."""

    id: Required[str]
    task_queue: Required[str]
    budget_s: Required[float]
    idempotent: bool
    same_request: bool


class Upstream:
    """The gateway's clients: pooled mTLS channels per service and one Temporal client."""

    def __init__(self, channels: Channels, temporal: Client, metrics: GatewayMetrics):
        self.channels = channels
        self.temporal = temporal
        # Channels connect lazily, on a service's first call.
        self.identity = IdentityServiceStub(channels.get("identity"))
        self.catalog = CatalogServiceStub(channels.get("catalog"))
        self.search = SearchServiceStub(channels.get("search"))
        self.inventory = InventoryServiceStub(channels.get("inventory"))
        self.orders = OrdersServiceStub(channels.get("orders"))
        self.payments = PaymentsServiceStub(channels.get("payments"))
        self.audit = AuditServiceStub(channels.get("audit"))
        self._metrics = metrics
        # Calls made on behalf of requests, by name; tests and the bench read it to
        # prove that a refused request reached no service.
        self.calls: Counter[str] = Counter()

    @asynccontextmanager
    async def call(self, request: web.Request, name: str) -> AsyncIterator[float]:
        """`async with upstream.call(request, "identity.GetAccount") as timeout: ...`"""
        timeout = remaining_s(request)
        if timeout <= 0:
            raise Problem("upstream-timeout", "the request's deadline passed before the call")
        self.calls[name] += 1
        self._metrics.upstream_calls.add(1, {"call": name})
        started = time.perf_counter()
        try:
            yield timeout
        except GRPCError as error:
            raise failures.from_grpc(error) from error
        except (WorkflowFailureError, WorkflowUpdateFailedError, FailureError, RPCError) as error:
            raise failures.from_temporal(error) from error
        except WorkflowQueryFailedError as error:
            # The workflow's query handler raised, or its task is failing: its message
            # is the worker's, not for clients (a 502 shows no detail).
            raise Problem("upstream-error") from error
        except WorkflowQueryRejectedError:
            # Refused by the query's reject condition: the workflow is no longer open.
            raise Problem("conflict", "the operation's workflow is no longer running") from None
        except (TimeoutError, RPCTimeoutOrCancelledError):
            # Includes an update whose answer did not come in time: the work may still
            # complete, and a retried request with the same Idempotency-Key will find it.
            raise Problem("upstream-timeout") from None
        except (OSError, StreamTerminatedError):
            raise Problem("upstream-unavailable") from None
        finally:
            request[TIMING].add("upstream", time.perf_counter() - started)

    async def execute_workflow(self, run: Any, arg: Any, **start: Unpack[StartOptions]) -> Any:
        """Start a workflow and wait for its result, all within `budget_s` seconds (what is
        left of the request's deadline). The result comes through `workflow_result`'s
        short polls, never one long poll that could miss its wake-up.

        `idempotent`: the workflow id carries the request's Idempotency-Key, and a retry
        gets the first attempt's result: it joins the run while it runs and, once the
        run has completed, reads its result (while the namespace keeps it) instead of
        doing the work again. Only a run that failed is started again, so a failure
        (a restock refused, a PSP outage) can be retried with the same key. Without
        `idempotent`, a second start while one runs is refused (a conflict) and one
        after it has closed runs again. A retry must ask for what the first attempt
        asked (`request_digest` of `arg`, kept in the run's memo): the same key with
        another request is refused with 409 instead of answered with the first result,
        or, after a failed run, instead of run with the other request (`same_request=False`
        where the id is not the client's key: a cancel's refund).
        """
        async with asyncio.timeout(start["budget_s"]):
            return await workflow_result(await self.start_workflow(run, arg, **start))

    async def start_workflow(
        self,
        run: Any,
        arg: Any,
        *,
        id: str,
        task_queue: str,
        budget_s: float,
        idempotent: bool = False,
        same_request: bool = True,
    ) -> WorkflowHandle[Any, Any]:
        """Start a workflow (as `execute_workflow` says) without waiting for its result:
        the handle of the run that answers the request, the one started, joined or,
        `idempotent`, the closed run a retry reads."""
        digest = request_digest(arg) if idempotent and same_request else ""
        if digest:
            # The run a start over a failed one would replace: compared after the start,
            # the new run's memo (this request's) always matched, and a failed
            # request's key took another body (a refund of another amount).
            await _same_request(self.temporal.get_workflow_handle(id), digest, missing_ok=True)
        try:
            started = await self.temporal.start_workflow(
                run,
                arg,
                id=id,
                task_queue=task_queue,
                memo={DIGEST_MEMO: digest} if digest else None,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING
                if idempotent
                else WorkflowIDConflictPolicy.UNSPECIFIED,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
                if idempotent
                else WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                rpc_timeout=timedelta(seconds=budget_s),
            )
            run_id = started.result_run_id
        except WorkflowAlreadyStartedError as closed:
            if not idempotent:
                raise
            run_id = closed.run_id
        # The run the start answered with, not the latest (a run that failed meanwhile
        # may have been followed by another).
        handle = self.temporal.get_workflow_handle_for(run, id, run_id=run_id)
        if digest:
            await _same_request(handle, digest)  # it may be a run we joined, or a closed one
        return handle

    async def closed_result(self, run: Any, id: str, run_id: str | None) -> Any:
        """The result of the run a start was refused for (its id was taken by it)."""
        return await workflow_result(self.temporal.get_workflow_handle_for(run, id, run_id=run_id))


# The memo key of an idempotent write's request digest.
DIGEST_MEMO = "request_digest"
KEY_REUSED = "this Idempotency-Key was used for another request: use a new key for a new one"


def request_digest(arg: Any) -> str:
    """What an idempotent write asked for: sha256 of its workflow input (a dataclass),
    as JSON with sorted keys, so a retry that sends the same body gives the same."""
    canonical = json.dumps(dataclasses.asdict(arg), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _same_request(
    handle: WorkflowHandle[Any, Any], digest: str, *, missing_ok: bool = False
) -> None:
    """Refuse (409) a retry whose request differs from the one that started `handle`'s
    run. A run started before digests were kept has none and is joined as before;
    `missing_ok`: no run at all is no conflict either."""
    try:
        described = await handle.describe()
    except RPCError as error:
        if missing_ok and error.status == RPCStatusCode.NOT_FOUND:
            return
        raise
    held = await described.memo_value(DIGEST_MEMO, "")
    if held and held != digest:
        raise Problem("conflict", KEY_REUSED)
