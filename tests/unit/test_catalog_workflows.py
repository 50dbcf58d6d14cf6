"""Catalog's workflows in the time-skipping environment, with stand-in activities."""

from __future__ import annotations

import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.catalog import (
    ChangePriceInput,
    RefreshCacheInput,
    UpsertBatchInput,
    UpsertBatchResult,
    WriteResult,
)
from workflows.catalog import (
    ChangePriceWorkflow,
    ImportInput,
    ImportProductsWorkflow,
    ProductData,
    product_write_workflow_id,
)

batches: list[UpsertBatchInput] = []
refreshed: list[list[str]] = []


@activity.defn(name="catalog.upsert_batch")
async def upsert_batch(data: UpsertBatchInput) -> UpsertBatchResult:
    batches.append(data)
    return UpsertBatchResult(created=len(data.products))


@activity.defn(name="catalog.change_price")
async def change_price(data: ChangePriceInput) -> WriteResult:
    if data.sku == "missing":
        raise ApplicationError("no product", type="NotFound", non_retryable=True)
    # Redis was down when the write committed: the workflow must refresh the cache.
    return WriteResult(data.sku, 2, True, cache_refreshed=False)


@activity.defn(name="catalog.refresh_cache")
async def refresh_cache(data: RefreshCacheInput) -> None:
    refreshed.append(data.skus)


def product(n: int, **overrides: object) -> ProductData:
    data = ProductData(
        sku=f"SKU-{n}", title=f"P{n}", category="a/b", price_minor=100, currency="EUR"
    )
    for key, value in overrides.items():
        setattr(data, key, value)
    return data


async def run_in_worker(env: WorkflowEnvironment, workflow_cls: type, arg: object) -> object:
    queue = f"catalog-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[workflow_cls],
        activities=[upsert_batch, change_price, refresh_cache],
    ):
        return await env.client.execute_workflow(
            workflow_cls.run, arg, id=f"wf-{uuid.uuid4()}", task_queue=queue
        )


async def test_import_runs_batches_and_reports_rejected_rows_without_sending_them(
    env: WorkflowEnvironment,
) -> None:
    batches.clear()
    products = [product(i) for i in range(25)] + [product(99, currency="XYZ")]
    progress = await run_in_worker(env, ImportProductsWorkflow, ImportInput("imp", products, 10))
    assert [len(b.products) for b in batches] == [10, 10, 5]
    assert progress.state == "completed"
    assert (progress.total, progress.processed, progress.created, progress.failed) == (
        26,
        26,
        25,
        1,
    )
    assert progress.errors[0].sku == "SKU-99" and "currency" in progress.errors[0].reason


async def test_an_empty_import_is_rejected(env: WorkflowEnvironment) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await run_in_worker(env, ImportProductsWorkflow, ImportInput("imp", []))
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "InvalidArgument"


async def test_a_write_whose_cache_refresh_failed_refreshes_it_durably(
    env: WorkflowEnvironment,
) -> None:
    refreshed.clear()
    result = await run_in_worker(env, ChangePriceWorkflow, ChangePriceInput("SKU-1", 5, "EUR"))
    assert result.cache_refreshed and refreshed == [["SKU-1"]]


async def test_a_rejection_surfaces_with_its_type(env: WorkflowEnvironment) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await run_in_worker(env, ChangePriceWorkflow, ChangePriceInput("missing", 5, "EUR"))
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "NotFound"


def test_write_workflow_ids_of_different_requests_never_meet() -> None:
    # A sku and an Idempotency-Key may both hold "-": joined plainly, these two
    # requests would share one workflow and the second would get the first's result.
    first = product_write_workflow_id("price", "SKU-42-000001", "abcdefgh")
    second = product_write_workflow_id("price", "SKU-42", "000001-abcdefgh")
    assert first != second
    assert first.startswith("catalog-price-SKU-42-000001-")
    assert product_write_workflow_id("price", "SKU-42", "k" * 8) == product_write_workflow_id(
        "price", "SKU-42", "k" * 8
    )
