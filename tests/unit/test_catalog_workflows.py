"""Catalog's workflows in the time-skipping environment, with stand-in activities."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.catalog import (
    ChangePriceInput,
    RefreshCacheInput,
    RowError,
    UpsertBatchInput,
    UpsertBatchResult,
    WriteResult,
)
from agora.errors import DomainError
from agora.temporal import workflow_runner
from workers.catalog.model import validate
from workflows.catalog import (
    ChangePriceWorkflow,
    ImportInput,
    ImportProductsWorkflow,
    ProductData,
    product_create_workflow_id,
    product_write_workflow_id,
)

batches: list[UpsertBatchInput] = []
refreshed: list[list[str]] = []


HISTORIES = Path(__file__).resolve().parent.parent / "histories"


@activity.defn(name="catalog.upsert_batch")
async def upsert_batch(data: UpsertBatchInput) -> UpsertBatchResult:
    """Validates every row as the real activity does, and creates the valid ones."""
    batches.append(data)
    result = UpsertBatchResult()
    for row in data.products:
        try:
            validate(row)
            result.created += 1
        except DomainError as error:
            result.errors.append(RowError(row.sku, error.detail))
    return result


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


async def run_in_worker(
    env: WorkflowEnvironment, workflow_cls: type, arg: object, history: str = ""
) -> object:
    """Run one workflow; AGORA_RECORD_HISTORIES=1 keeps a named run's history for replay."""
    queue = f"catalog-{uuid.uuid4()}"
    workflow_id = f"wf-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[workflow_cls],
        workflow_runner=workflow_runner(),
        activities=[upsert_batch, change_price, refresh_cache],
    ):
        result = await env.client.execute_workflow(
            workflow_cls.run, arg, id=workflow_id, task_queue=queue
        )
    if history and os.environ.get("AGORA_RECORD_HISTORIES"):
        recorded = await env.client.get_workflow_handle(workflow_id).fetch_history()
        (HISTORIES / f"{history}.json").write_text(recorded.to_json())
    return result


async def test_import_runs_batches_and_reports_the_rows_the_activity_rejected(
    env: WorkflowEnvironment,
) -> None:
    batches.clear()
    products = [product(i) for i in range(25)] + [product(99, currency="XYZ")]
    progress = await run_in_worker(env, ImportProductsWorkflow, ImportInput("imp", products, 10))
    # Validation is the activity's (the workflow code holds no rule that could change).
    assert [len(b.products) for b in batches] == [10, 10, 6]
    assert progress.state == "completed"
    assert (progress.total, progress.processed, progress.created, progress.failed) == (
        26,
        26,
        25,
        1,
    )
    assert progress.errors[0].sku == "SKU-99" and "currency" in progress.errors[0].reason


async def test_an_import_reports_every_invalid_row_even_a_batch_with_no_valid_one(
    env: WorkflowEnvironment,
) -> None:
    batches.clear()
    products = [product(1), product(2, currency="eur"), product(3, price_minor=-1)]
    products += [product(4, title=""), product(5, currency="XYZ"), product(6)]
    progress = await run_in_worker(
        env, ImportProductsWorkflow, ImportInput("imp", products, 2), history="import-screened"
    )
    assert progress.state == "completed"
    assert (progress.total, progress.processed, progress.created, progress.failed) == (6, 6, 2, 4)
    assert [e.sku for e in progress.errors] == ["SKU-2", "SKU-3", "SKU-4", "SKU-5"]
    assert (progress.batches_done, progress.batches_total) == (3, 3)


async def test_an_empty_import_is_rejected(env: WorkflowEnvironment) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await run_in_worker(env, ImportProductsWorkflow, ImportInput("imp", []))
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "InvalidArgument"


async def test_a_write_whose_cache_refresh_failed_refreshes_it_durably(
    env: WorkflowEnvironment,
) -> None:
    refreshed.clear()
    result = await run_in_worker(
        env,
        ChangePriceWorkflow,
        ChangePriceInput("SKU-1", 5, "EUR"),
        history="catalog-change-price",
    )
    assert result.cache_refreshed and refreshed == [["SKU-1"]]


async def test_a_rejection_surfaces_with_its_type(env: WorkflowEnvironment) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await run_in_worker(env, ChangePriceWorkflow, ChangePriceInput("missing", 5, "EUR"))
    assert isinstance(failure.value.cause, ApplicationError)
    assert failure.value.cause.type == "NotFound"


def test_write_workflow_ids_of_different_requests_never_meet() -> None:
    # A sku and an Idempotency-Key may both hold "-": joined plainly, these two
    # requests would share one workflow and the second would get the first's result.
    first = product_write_workflow_id("price", "SKU-42-000001", "caller", "abcdefgh")
    second = product_write_workflow_id("price", "SKU-42", "caller", "000001-abcdefgh")
    assert first != second
    assert first.startswith("catalog-price-SKU-42-000001-")
    assert product_write_workflow_id(
        "price", "SKU-42", "caller", "k" * 8
    ) == product_write_workflow_id("price", "SKU-42", "caller", "k" * 8)


def test_write_workflow_ids_of_two_callers_with_one_key_never_meet() -> None:
    # Two integrations numbering their keys alike: one's write must not be answered
    # with the other's. A key may hold ":", a subject anything.
    key = "00000007"
    assert product_write_workflow_id("deactivate", "SKU-1", "a", key) != (
        product_write_workflow_id("deactivate", "SKU-1", "b", key)
    )
    assert product_write_workflow_id("deactivate", "SKU-1", "a:b", "c:000007") != (
        product_write_workflow_id("deactivate", "SKU-1", "a", "b:c:000007")
    )


def test_a_creates_workflow_id_is_its_callers_key_whatever_the_sku() -> None:
    # The sku of a create is in its body: one caller's key is one create, so another
    # sku under the same key meets the first run and its digest check (409).
    assert product_create_workflow_id("a", "k" * 8) == product_create_workflow_id("a", "k" * 8)
    assert product_create_workflow_id("a", "k" * 8) != product_create_workflow_id("b", "k" * 8)
    assert product_create_workflow_id("a:b", "c:000007") != (
        product_create_workflow_id("a", "b:c:000007")
    )
    assert product_create_workflow_id("a", "k" * 8).startswith("catalog-create-")
