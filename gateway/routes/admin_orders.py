"""Admin order search: Temporal visibility over the order saga's search attributes.

`GET /v1/admin/orders?status=REJECTED&customer_id=...` lists `OrderWorkflow`
executions through `client.list_workflows(query)`, with the same typed search
attributes the Temporal UI filters on (workflows/orders.py, registered by
stack/temporal.py). The visibility query is built here from validated,
structured parameters (enumerations, UUIDs, integers) and never from the
caller's text, so no input can widen or rewrite it (query injection).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from temporalio import workflow
from temporalio.client import WorkflowExecution
from temporalio.service import RPCError, RPCStatusCode

from agora import scopes
from agora.money import MAX_AMOUNT_MINOR
from gateway.deps import deps
from gateway.problems import Problem
from gateway.routing import Route
from workers.orders.model import (
    CUSTOMER_ID,
    ITEM_COUNT,
    ORDER_ID,
    ORDER_STATUS,
    ORDER_TOTAL,
    PAYMENT_OUTCOME,
)
from workflows.orders import OrderWorkflow

ADMIN = frozenset({scopes.ADMIN})
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

# The registered workflow type name (its @workflow.defn name), as visibility knows it.
ORDER_WORKFLOW_TYPE = workflow._Definition.must_from_class(OrderWorkflow).name

# The values OrderWorkflow upserts (workflows/orders.py).
OrderStatus = Literal[
    "PENDING",
    "AWAITING_PAYMENT",
    "CONFIRMED",
    "COMPLETED",
    "CANCELLED",
    "REJECTED",
    # A cancel during the stock commit that met an earlier refund (cancel_completed).
    "REFUNDED",
    "PARTIALLY_REFUNDED",
]
PaymentOutcome = Literal["authorized", "requires_action", "timeout", "captured", "declined"]


class AdminOrdersQuery(BaseModel):
    """Filters, combined with AND; every value is checked against its type before use."""

    # Query strings are text: integers arrive as "25".
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    status: OrderStatus | None = None
    customer_id: Annotated[str, StringConstraints(pattern=UUID_PATTERN)] | None = None
    order_id: Annotated[str, StringConstraints(pattern=UUID_PATTERN)] | None = None
    payment_outcome: PaymentOutcome | None = None
    min_total_minor: Annotated[int, Field(ge=0, le=MAX_AMOUNT_MINOR)] | None = None
    max_total_minor: Annotated[int, Field(ge=0, le=MAX_AMOUNT_MINOR)] | None = None
    running: bool | None = Field(
        default=None, description="true: only running sagas; false: only closed ones"
    )
    page_size: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: Annotated[str, StringConstraints(max_length=2048, pattern=r"^[A-Za-z0-9_=-]*$")] = ""


class AdminOrderSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    order_id: str
    customer_id: str
    status: str
    total_minor: int | None = None
    item_count: int | None = None
    payment_outcome: str | None = None
    workflow_id: str
    run_id: str
    workflow_status: str
    started_at: datetime
    closed_at: datetime | None = None
    workflow_url: str


class AdminOrderList(BaseModel):
    model_config = ConfigDict(frozen=True)

    orders: list[AdminOrderSummary]
    query: str = Field(description="The visibility query that was run (also usable in the UI)")
    next_cursor: str = ""


def visibility_query(filters: AdminOrdersQuery) -> str:
    """The Temporal visibility query for the filters.

    Values are only ever enumeration members, lower-case UUIDs or integers (the
    model's patterns), so the double quotes around them cannot be broken out of.
    """
    clauses = [f'WorkflowType = "{ORDER_WORKFLOW_TYPE}"']
    for key, value in (
        (ORDER_STATUS.name, filters.status),
        (CUSTOMER_ID.name, filters.customer_id),
        (ORDER_ID.name, filters.order_id),
        (PAYMENT_OUTCOME.name, filters.payment_outcome),
    ):
        if value is not None:
            clauses.append(f'{key} = "{value}"')
    if filters.min_total_minor is not None:
        clauses.append(f"{ORDER_TOTAL.name} >= {int(filters.min_total_minor)}")
    if filters.max_total_minor is not None:
        clauses.append(f"{ORDER_TOTAL.name} <= {int(filters.max_total_minor)}")
    if filters.running is not None:
        clauses.append(f'ExecutionStatus {"=" if filters.running else "!="} "Running"')
    return " AND ".join(clauses)


# A cursor is Temporal's page token with the first bytes of its SHA-256 after it: a
# token Temporal cannot read (a cursor cut short, made up, or changed by a fuzzer) is
# not refused as INVALID_ARGUMENT but fails UNKNOWN, which the SDK retries until the
# request's deadline (503). A cursor that does not match its digest is 400 at once.
_CURSOR_CHECK_BYTES = 8


def _check(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()[:_CURSOR_CHECK_BYTES]


def _cursor(token: bytes) -> str:
    return base64.urlsafe_b64encode(token + _check(token)).decode()


def _cursor_token(cursor: str) -> bytes | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor)
    except (binascii.Error, ValueError):
        raw = b""
    token, check = raw[:-_CURSOR_CHECK_BYTES], raw[-_CURSOR_CHECK_BYTES:]
    if not token or not hmac.compare_digest(check, _check(token)):
        raise Problem("invalid-argument", "cursor is not one this route answered")
    return token


def _summary(request: web.Request, execution: WorkflowExecution) -> AdminOrderSummary:
    attributes = execution.typed_search_attributes
    settings = deps(request).settings
    ui = (
        f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}"
        f"/workflows/{execution.id}/{execution.run_id}"
    )
    return AdminOrderSummary(
        order_id=attributes.get(ORDER_ID) or execution.id.removeprefix("order-"),
        customer_id=attributes.get(CUSTOMER_ID) or "",
        status=attributes.get(ORDER_STATUS) or "",
        total_minor=attributes.get(ORDER_TOTAL),
        item_count=attributes.get(ITEM_COUNT),
        payment_outcome=attributes.get(PAYMENT_OUTCOME),
        workflow_id=execution.id,
        run_id=execution.run_id,
        workflow_status=execution.status.name if execution.status else "UNSPECIFIED",
        started_at=execution.start_time,
        closed_at=execution.close_time,
        workflow_url=ui,
    )


async def search_orders(request: web.Request, filters: AdminOrdersQuery) -> AdminOrderList:
    if (
        filters.min_total_minor is not None
        and filters.max_total_minor is not None
        and filters.min_total_minor > filters.max_total_minor
    ):
        raise Problem("invalid-argument", "min_total_minor is above max_total_minor")
    gw = deps(request)
    query = visibility_query(filters)
    token = _cursor_token(filters.cursor)
    async with gw.upstream.call(request, "temporal.ListWorkflows") as timeout:
        async with asyncio.timeout(timeout):
            page = gw.upstream.temporal.list_workflows(
                query,
                page_size=filters.page_size,
                next_page_token=token,
                rpc_timeout=timedelta(seconds=timeout),
            )
            try:
                await page.fetch_next_page()
            except RPCError as error:
                # The query is ours and well-formed: refused, it is the page token.
                if token is None or error.status != RPCStatusCode.INVALID_ARGUMENT:
                    raise
                raise Problem("invalid-argument", "cursor is not one this route answered") from None
    next_token = page.next_page_token or b""
    return AdminOrderList(
        orders=[_summary(request, execution) for execution in page.current_page or []],
        query=query,
        next_cursor=_cursor(next_token) if next_token else "",
    )


ROUTES = [
    Route(
        "GET",
        "/v1/admin/orders",
        search_orders,
        "Find orders by status, customer, order id, payment outcome or total"
        " (Temporal visibility over the saga's search attributes)",
        "admin",
        auth=True,
        scopes=ADMIN,
        route_class="read",
        query=AdminOrdersQuery,
        response=AdminOrderList,
        problems=("invalid-argument",),
    ),
]
