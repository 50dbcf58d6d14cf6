"""Catalog's workflows: the admin writes and the bulk import, on catalog's task queue.

A single-product write is one activity (its row and event in one transaction)
plus, only if Redis was down at that moment, a retried cache refresh, so the
cache cannot keep a stale entry beyond the outage. The import runs its batches
one after another and answers a `progress` query; after a worker restart it
resumes from its history, and the upserts make a re-run batch a no-op.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.catalog import (
        CatalogActivities,
        ChangePriceInput,
        CreateProductInput,
        DeactivateProductInput,
        RefreshCacheInput,
        RowError,
        UpdateProductInput,
        UpsertBatchInput,
        WriteResult,
    )
    from agora.errors import DomainError
    from workers.catalog.errors import INVALID
    from workers.catalog.model import ProductData, validate

__all__ = [
    "TASK_QUEUE",
    "ChangePriceInput",
    "ChangePriceWorkflow",
    "CreateProductInput",
    "CreateProductWorkflow",
    "DeactivateProductInput",
    "DeactivateProductWorkflow",
    "ImportInput",
    "ImportProductsWorkflow",
    "ImportProgress",
    "ProductData",
    "UpdateProductInput",
    "UpdateProductWorkflow",
    "WriteResult",
    "import_workflow_id",
    "product_create_workflow_id",
    "product_write_workflow_id",
]

TASK_QUEUE = "agora-catalog"
STEP_TIMEOUT = timedelta(seconds=10)
BATCH_TIMEOUT = timedelta(seconds=120)
BATCH_HEARTBEAT = timedelta(seconds=10)
MAX_IMPORT_PRODUCTS = 5_000
DEFAULT_BATCH_SIZE = 100
PROGRESS_QUERY = "progress"


def product_write_workflow_id(operation: str, sku: str, caller: str, request_key: str) -> str:
    """Per caller and request: a retried request (same caller, same key) joins the
    write instead of repeating it; another caller's request with the same key is its own
    write, never answered with the first one's result.

    The sku stays readable for the Temporal UI; the digest of sku, caller and key keeps
    ids apart that plain joining would not (a sku and a key may both hold "-":
    ("SKU-42-000001", "abcdefgh") and ("SKU-42", "000001-abcdefgh") met before). Neither
    a sku nor a key holds a newline, so the caller, whatever it holds, is what lies
    between the first and the last one."""
    return f"catalog-{operation}-{sku}-{_id_digest(sku, caller, request_key)}"


def product_create_workflow_id(caller: str, request_key: str) -> str:
    """A create's: per caller and key only. The sku is in the create's body, so the
    same key with another sku is another body, refused (409) by the start's digest;
    with the sku in the id it started a second write and made a second product."""
    return f"catalog-create-{_id_digest(caller, request_key)}"


def import_workflow_id(import_id: str) -> str:
    return f"catalog-import-{import_id}"


def caller_import_workflow_id(caller: str, import_id: str) -> str:
    """The workflow of `caller`'s import `import_id` (its Idempotency-Key): another
    caller's key is another import, and its status is not found. The key stays readable
    for the Temporal UI; a key holds no newline, so the digest's input splits one way."""
    return import_workflow_id(f"{import_id}-{_id_digest(caller, import_id)}")


def _id_digest(*parts: str) -> str:
    """What keeps workflow ids of different requests apart: sha256 of the parts, one
    per line (a sku or a key holds no newline), 24 hex digits."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


@contextmanager
def _rejections_surface() -> Iterator[None]:
    """An activity's business rejection becomes the workflow's failure, with its type."""
    try:
        yield
    except ActivityError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.non_retryable:
            raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from err
        raise


async def _refresh_if_needed(result: WriteResult) -> WriteResult:
    if not result.cache_refreshed:
        await workflow.execute_activity_method(
            CatalogActivities.refresh_cache,
            RefreshCacheInput([result.sku]),
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
        )
        result.cache_refreshed = True
    return result


WriteInput = TypeVar("WriteInput")


async def _write(
    step: Callable[[CatalogActivities, WriteInput], Awaitable[WriteResult]], data: WriteInput
) -> WriteResult:
    """One product write: the activity (its rejections surfaced), then the cache refresh."""
    with _rejections_surface():
        result = await workflow.execute_activity_method(
            step, data, start_to_close_timeout=STEP_TIMEOUT
        )
    return await _refresh_if_needed(result)


@workflow.defn(name="CreateProduct")
class CreateProductWorkflow:
    @workflow.run
    async def run(self, data: CreateProductInput) -> WriteResult:
        return await _write(CatalogActivities.create_product, data)


@workflow.defn(name="UpdateProduct")
class UpdateProductWorkflow:
    @workflow.run
    async def run(self, data: UpdateProductInput) -> WriteResult:
        return await _write(CatalogActivities.update_product, data)


@workflow.defn(name="ChangePrice")
class ChangePriceWorkflow:
    @workflow.run
    async def run(self, data: ChangePriceInput) -> WriteResult:
        return await _write(CatalogActivities.change_price, data)


@workflow.defn(name="DeactivateProduct")
class DeactivateProductWorkflow:
    @workflow.run
    async def run(self, data: DeactivateProductInput) -> WriteResult:
        return await _write(CatalogActivities.deactivate_product, data)


@dataclass
class ImportInput:
    import_id: str
    products: list[ProductData]
    batch_size: int = DEFAULT_BATCH_SIZE
    # Products that exist are left as they are, counted unchanged: the demo seed,
    # which `make run` repeats, never reverts an admin's price change or deactivation.
    create_only: bool = False
    # Skus whose row left `active` out: an existing product keeps its own (a product
    # DELETE took off sale stays off sale), a new one is on sale.
    keep_active: list[str] = field(default_factory=list)


@dataclass
class ImportProgress:
    import_id: str
    state: str = "running"  # running | completed
    total: int = 0
    processed: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    batches_done: int = 0
    batches_total: int = 0
    # The first rejected rows, for the status page (the count is in `failed`).
    errors: list[RowError] = field(default_factory=list)


MAX_REPORTED_ERRORS = 50
# workflow.patched id: rows are validated by the batch activity only.
VALIDATE_IN_ACTIVITY = "import-validates-in-activity"


@workflow.defn(name="ImportProducts")
class ImportProductsWorkflow:
    """Upsert many products by sku in batches, reporting progress through a query."""

    def __init__(self) -> None:
        self._progress = ImportProgress(import_id="")

    @workflow.run
    async def run(self, data: ImportInput) -> ImportProgress:
        if not data.products or len(data.products) > MAX_IMPORT_PRODUCTS:
            raise ApplicationError(
                f"an import has 1 to {MAX_IMPORT_PRODUCTS} products",
                type=INVALID,
                non_retryable=True,
            )
        size = max(1, min(data.batch_size, 500))
        batches = [data.products[i : i + size] for i in range(0, len(data.products), size)]
        progress = self._progress
        progress.import_id = data.import_id
        progress.total = len(data.products)
        progress.batches_total = len(batches)
        # The batch activity validates every row itself. Runs started before this
        # patch also screened rows here, in workflow code, where a rule change
        # would have changed their replay; they keep doing so.
        screen_here = not workflow.patched(VALIDATE_IN_ACTIVITY)
        keep_active = set(data.keep_active)
        for index, batch in enumerate(batches):
            valid = self._screen(batch) if screen_here else batch
            if valid:
                keep = [p.sku for p in valid if p.sku in keep_active]
                result = await workflow.execute_activity_method(
                    CatalogActivities.upsert_batch,
                    UpsertBatchInput(data.import_id, index, valid, data.create_only, keep),
                    start_to_close_timeout=BATCH_TIMEOUT,
                    heartbeat_timeout=BATCH_HEARTBEAT,
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                )
                progress.created += result.created
                progress.updated += result.updated
                progress.unchanged += result.unchanged
                self._reject(result.errors)
            progress.processed += len(batch)
            progress.batches_done += 1
        progress.state = "completed"
        return progress

    def _screen(self, batch: list[ProductData]) -> list[ProductData]:
        """Runs started before VALIDATE_IN_ACTIVITY only: rows that break a rule are
        reported, not sent (one bad row never fails a batch either way)."""
        valid = []
        for product in batch:
            try:
                validate(product)
                valid.append(product)
            except DomainError as error:
                self._reject([RowError(product.sku, error.detail)])
        return valid

    def _reject(self, errors: list[RowError]) -> None:
        self._progress.failed += len(errors)
        room = MAX_REPORTED_ERRORS - len(self._progress.errors)
        self._progress.errors.extend(errors[: max(room, 0)])

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> ImportProgress:
        return self._progress
