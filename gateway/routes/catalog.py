"""Products: reads straight from catalog's gRPC API (cached there), admin writes as workflows.

Reads need `catalog:read`, writes `catalog:write`. A write runs as a workflow on
catalog's task queue whose id carries the caller and the request's
`Idempotency-Key` (or a fresh one), so a retried request joins the write instead
of repeating it, and another caller's request with the same key is a write of its
own. An import's status is found under the caller's id too: another caller's import
id is not found.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from agora import scopes
from contracts.agora.catalog.v1 import (
    BatchGetProductsRequest,
    GetProductRequest,
    ListProductsRequest,
    Product,
)
from contracts.agora.common.v1 import PageRequest
from gateway import idempotency
from gateway.context import principal_of
from gateway.deps import deps
from gateway.idempotency import idempotency_key
from gateway.problems import Problem
from gateway.routing import Route, path_param
from gateway.schemas_catalog import (
    MAX_IMPORT_BODY_BYTES,
    ChangePriceRequest,
    CreateProductRequest,
    ImportProductsRequest,
    ImportRowError,
    ImportStartedResponse,
    ImportStatusResponse,
    MoneyAnswer,
    ProductFields,
    ProductListResponse,
    ProductResponse,
    ProductsQuery,
    ProductWriteResponse,
    UpdateProductRequest,
)
from workers.catalog.model import SKU_PATTERN
from workflows.catalog import (
    TASK_QUEUE,
    ChangePriceInput,
    ChangePriceWorkflow,
    CreateProductInput,
    CreateProductWorkflow,
    DeactivateProductInput,
    DeactivateProductWorkflow,
    ImportInput,
    ImportProductsWorkflow,
    ImportProgress,
    ProductData,
    UpdateProductInput,
    UpdateProductWorkflow,
    WriteResult,
    caller_import_workflow_id,
    product_create_workflow_id,
    product_write_workflow_id,
)

# Temporal refuses a workflow input larger than this: its `limit.blobSize.error`, whose
# default stack/temporal.py leaves alone (a cluster's must not be lower).
MAX_WORKFLOW_INPUT_BYTES = 2 * 1024 * 1024

READ = frozenset({scopes.CATALOG_READ})
WRITE = frozenset({scopes.CATALOG_WRITE})
M = TypeVar("M", bound=BaseModel)


def product_response(product: Product | None) -> ProductResponse:
    if product is None:
        raise Problem("upstream-error", "catalog answered without the product")
    price = product.price
    return ProductResponse(
        sku=product.sku,
        title=product.title,
        description=product.description,
        brand=product.brand,
        category=product.category,
        attributes=dict(product.attributes),
        price=MoneyAnswer(
            amount_minor=price.amount_minor if price else 0,
            currency=price.currency if price else "",
        ),
        active=product.active,
        version=product.version,
        created_at=product.created_at,
        updated_at=product.updated_at,
    )


def _product_data(sku: str, fields: ProductFields, active: bool) -> ProductData:
    return ProductData(
        sku=sku,
        title=fields.title,
        category=fields.category,
        price_minor=fields.price.amount_minor,
        currency=fields.price.currency,
        description=fields.description,
        brand=fields.brand,
        attributes=dict(fields.attributes),
        active=active,
    )


# Reads -----------------------------------------------------------------------------


async def get_product(request: web.Request, _: None) -> ProductResponse:
    gw = deps(request)
    call = GetProductRequest(sku=_sku(request))
    async with gw.upstream.call(request, "catalog.GetProduct") as timeout:
        reply = await gw.upstream.catalog.get_product(call, timeout=timeout)
    return product_response(reply.product)


async def list_products(request: web.Request, query: ProductsQuery) -> ProductListResponse:
    gw = deps(request)
    if query.sku is not None:
        async with gw.upstream.call(request, "catalog.BatchGetProducts") as timeout:
            batch = await gw.upstream.catalog.batch_get_products(
                BatchGetProductsRequest(skus=query.sku), timeout=timeout
            )
        return ProductListResponse(
            products=[product_response(p) for p in batch.products],
            not_found=list(batch.not_found),
        )
    call = ListProductsRequest(
        category=query.category or "",
        page=PageRequest(page_size=query.limit, cursor=query.cursor),
    )
    async with gw.upstream.call(request, "catalog.ListProducts") as timeout:
        page = await gw.upstream.catalog.list_products(call, timeout=timeout)
    info = page.page
    return ProductListResponse(
        products=[product_response(p) for p in page.products],
        next_cursor=info.next_cursor if info is not None and info.has_more else None,
    )


# Writes ----------------------------------------------------------------------------


async def _execute(
    request: web.Request, name: str, run: Callable[..., Any], arg: Any, workflow_id: str
) -> WriteResult:
    gw = deps(request)
    async with gw.upstream.call(request, f"temporal.{name}") as timeout:
        result: WriteResult = await gw.upstream.execute_workflow(
            run,
            arg,
            id=workflow_id,
            task_queue=TASK_QUEUE,
            budget_s=timeout,
            idempotent=True,
        )
    return result


def _sku(request: web.Request) -> str:
    """The sku of a path: a write's becomes part of its workflow id, and a read's
    unchecked (up to the request line's 8 KB) cost catalog a lookup and a cached
    "not found" entry for a sku no product can have."""
    return path_param(request, "sku", SKU_PATTERN, "1-64 letters, digits, '.', '_' or '-'")


def _write_workflow_id(request: web.Request, operation: str, sku: str) -> str:
    """The caller's write: two integrations numbering their keys alike must not have
    one's write answered with the other's (as restock's `admin:<caller>:<key>`)."""
    caller = principal_of(request).subject
    key = idempotency_key(request, required=False)
    return product_write_workflow_id(operation, sku, caller, key)


def _written(result: WriteResult) -> ProductWriteResponse:
    return ProductWriteResponse(sku=result.sku, version=result.version, changed=result.changed)


async def create_product(request: web.Request, body: CreateProductRequest) -> ProductWriteResponse:
    data = CreateProductInput(_product_data(body.sku, body, body.active))
    key = idempotency_key(request, required=False)
    workflow_id = product_create_workflow_id(principal_of(request).subject, key)
    return _written(
        await _execute(request, "CreateProduct", CreateProductWorkflow.run, data, workflow_id)
    )


async def update_product(request: web.Request, body: UpdateProductRequest) -> ProductWriteResponse:
    sku = _sku(request)
    data = UpdateProductInput(
        _product_data(sku, body, True if body.active is None else body.active),
        body.expected_version or 0,
        keep_active=body.active is None,
    )
    workflow_id = _write_workflow_id(request, "update", sku)
    return _written(
        await _execute(request, "UpdateProduct", UpdateProductWorkflow.run, data, workflow_id)
    )


async def change_price(request: web.Request, body: ChangePriceRequest) -> ProductWriteResponse:
    sku = _sku(request)
    data = ChangePriceInput(sku, body.amount_minor, body.currency, body.expected_version or 0)
    workflow_id = _write_workflow_id(request, "price", sku)
    return _written(
        await _execute(request, "ChangePrice", ChangePriceWorkflow.run, data, workflow_id)
    )


async def deactivate_product(request: web.Request, _: None) -> ProductWriteResponse:
    sku = _sku(request)
    data = DeactivateProductInput(sku)
    workflow_id = _write_workflow_id(request, "deactivate", sku)
    return _written(
        await _execute(
            request, "DeactivateProduct", DeactivateProductWorkflow.run, data, workflow_id
        )
    )


# Bulk import -----------------------------------------------------------------------


async def _refuse_input_over_temporal_limit(temporal: Client, data: ImportInput) -> None:
    """413 for products that fit the body limit but not Temporal's: its JSON escapes
    non-ASCII text (a Cyrillic letter, 2 bytes in the body, is 6 in the payload), so
    they are measured as the start will send them, with the client's own converter and
    codec. Temporal's own refusal would reach the client as a vague 400."""
    size = Payloads(payloads=await temporal.data_converter.encode([data])).ByteSize()
    if size > MAX_WORKFLOW_INPUT_BYTES:
        raise Problem(
            "body-too-large",
            f"these products make a {size}-byte workflow input and Temporal takes at most"
            f" {MAX_WORKFLOW_INPUT_BYTES} bytes (2 MiB; non-ASCII text counts up to 3 times"
            " its UTF-8 size): split them into several imports",
        )


async def start_import(request: web.Request, body: ImportProductsRequest) -> ImportStartedResponse:
    gw = deps(request)
    import_id = idempotency_key(request, required=False)
    data = ImportInput(
        import_id=import_id,
        products=[_product_data(p.sku, p, p.active is not False) for p in body.products],
        batch_size=body.batch_size,
        keep_active=[p.sku for p in body.products if p.active is None],
    )
    await _refuse_input_over_temporal_limit(gw.upstream.temporal, data)
    async with gw.upstream.call(request, "temporal.ImportProducts") as timeout:
        # A retry (same caller, same key) joins the import, or finds it done, instead
        # of importing again (an import run anew would overwrite edits made since); the
        # same key with other products is refused (409). The start's rpc_timeout bounds
        # one attempt only (the client retries an unavailable Temporal for ~10 s), so
        # the start and its check of a joined run's request get the request's deadline.
        async with asyncio.timeout(timeout):
            await gw.upstream.start_workflow(
                ImportProductsWorkflow.run,
                data,
                id=caller_import_workflow_id(principal_of(request).subject, import_id),
                task_queue=TASK_QUEUE,
                budget_s=timeout,
                idempotent=True,
            )
    return ImportStartedResponse(import_id=import_id, status_url=f"/v1/admin/imports/{import_id}")


async def import_status(request: web.Request, _: None) -> ImportStatusResponse:
    gw = deps(request)
    import_id = path_param(request, "import_id", idempotency.KEY_PATTERN, idempotency.RULE)
    workflow_id = caller_import_workflow_id(principal_of(request).subject, import_id)
    handle = gw.upstream.temporal.get_workflow_handle(workflow_id, result_type=ImportProgress)
    async with gw.upstream.call(request, "temporal.ImportStatus") as timeout:
        # rpc_timeout bounds one attempt only: the client retries an unavailable
        # Temporal for up to ~10 s, so the reads together get the request's deadline.
        async with asyncio.timeout(timeout):
            rpc_timeout = timedelta(seconds=timeout)
            try:
                description = await handle.describe(rpc_timeout=rpc_timeout)
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:
                    raise Problem("not-found", f"no import {import_id!r}") from None
                raise
            if description.status == WorkflowExecutionStatus.COMPLETED:
                # Read from history: needs no worker (a query does, and waits for one).
                progress = await handle.result(rpc_timeout=rpc_timeout)
            elif description.status == WorkflowExecutionStatus.RUNNING:
                progress = await handle.query(
                    ImportProductsWorkflow.progress, rpc_timeout=rpc_timeout
                )
            else:
                progress = ImportProgress(import_id=import_id, state="failed")
    state = progress.state
    return ImportStatusResponse(
        import_id=import_id,
        state=state,  # type: ignore[arg-type]
        total=progress.total,
        processed=progress.processed,
        created=progress.created,
        updated=progress.updated,
        unchanged=progress.unchanged,
        failed=progress.failed,
        errors=[ImportRowError(sku=e.sku, reason=e.reason) for e in progress.errors],
    )


ROUTES = [
    Route(
        "GET",
        "/v1/products/{sku}",
        get_product,
        "Get one product",
        "catalog",
        auth=True,
        scopes=READ,
        route_class="read",
        response=ProductResponse,
        problems=("not-found",),
    ),
    Route(
        "GET",
        "/v1/products",
        list_products,
        "Batch get products (?sku=a&sku=b) or list a category (keyset pages)",
        "catalog",
        auth=True,
        scopes=READ,
        route_class="read",
        query=ProductsQuery,
        response=ProductListResponse,
        problems=("invalid-argument",),
    ),
    Route(
        "POST",
        "/v1/admin/products",
        create_product,
        "Create a product",
        "catalog-admin",
        auth=True,
        scopes=WRITE,
        route_class="write",
        body=CreateProductRequest,
        response=ProductWriteResponse,
        status=201,
        problems=("conflict", "invalid-argument"),
        idempotency="optional",
    ),
    Route(
        "PUT",
        "/v1/admin/products/{sku}",
        update_product,
        "Replace a product's fields",
        "catalog-admin",
        auth=True,
        scopes=WRITE,
        route_class="write",
        body=UpdateProductRequest,
        response=ProductWriteResponse,
        problems=("not-found", "conflict", "invalid-argument"),
        idempotency="optional",
    ),
    Route(
        "POST",
        "/v1/admin/products/{sku}/price",
        change_price,
        "Change a product's price",
        "catalog-admin",
        auth=True,
        scopes=WRITE,
        route_class="write",
        body=ChangePriceRequest,
        response=ProductWriteResponse,
        problems=("not-found", "conflict", "invalid-argument"),
        idempotency="optional",
    ),
    Route(
        "DELETE",
        "/v1/admin/products/{sku}",
        deactivate_product,
        "Deactivate a product (it stays readable, no longer sold or found)",
        "catalog-admin",
        auth=True,
        scopes=WRITE,
        route_class="write",
        response=ProductWriteResponse,
        problems=("not-found",),
        idempotency="optional",
    ),
    Route(
        "POST",
        "/v1/admin/products/import",
        start_import,
        "Start a bulk import (upsert by sku); poll the status URL for progress",
        "catalog-admin",
        auth=True,
        scopes=WRITE,
        route_class="write",
        body=ImportProductsRequest,
        response=ImportStartedResponse,
        status=202,
        problems=("conflict", "invalid-argument"),
        idempotency="optional",
        max_body_bytes=MAX_IMPORT_BODY_BYTES,
    ),
    Route(
        "GET",
        "/v1/admin/imports/{import_id}",
        import_status,
        "Progress of a bulk import",
        "catalog-admin",
        auth=True,
        scopes=WRITE,
        route_class="read",
        response=ImportStatusResponse,
        problems=("not-found",),
    ),
]
