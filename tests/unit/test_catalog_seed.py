"""`make seed` run twice at once: the second waits for the first's workflows, nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from faker import Faker
from temporalio import activity, client
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.catalog import UpsertBatchInput, UpsertBatchResult
from activities.inventory import SetStockInput
from agora.temporal import workflow_runner
from workers.catalog import seed
from workers.inventory.model import SetStockResult, StockLine
from workflows.catalog import TASK_QUEUE, ImportProductsWorkflow
from workflows.inventory import TASK_QUEUE as INVENTORY_QUEUE
from workflows.inventory import SeedStockInput, SeedStockWorkflow

T = TypeVar("T")

# Faker imports a locale's providers on first use, and pytest rewrites them as they
# are imported (faker is a pytest plugin): an AST parse inside a test, which failed in
# CI while a background thread parsed too (CPython 3.11.7, gh-106905, fixed in
# 3.11.8: "AST constructor recursion depth mismatch"). Imported here, at collection.
Faker(seed.LOCALES)


class _Starts(client.Interceptor):
    """Counts workflow starts the server has answered (started, attached or refused)."""

    def __init__(self) -> None:
        self.answered = 0

    def intercept_client(self, next: client.OutboundInterceptor) -> client.OutboundInterceptor:
        return _CountStarts(next, self)


class _CountStarts(client.OutboundInterceptor):
    def __init__(self, next: client.OutboundInterceptor, starts: _Starts) -> None:
        super().__init__(next)
        self._starts = starts

    async def start_workflow(
        self, input: client.StartWorkflowInput
    ) -> client.WorkflowHandle[Any, Any]:
        try:
            return await super().start_workflow(input)
        finally:
            self._starts.answered += 1


async def _until(condition: Callable[[], bool], within_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _twice_while_the_first_runs(
    env: WorkflowEnvironment,
    seeding: Callable[[Client], Coroutine[Any, Any, T]],
    calls: Sequence[object],
    release: asyncio.Event,
) -> tuple[T, T]:
    """Start `seeding`, start it again once the first is inside its activity, then let go."""
    starts = _Starts()
    config = env.client.config()
    config["interceptors"] = [starts]
    counted = Client(**config)
    first = asyncio.create_task(seeding(counted))
    await _until(lambda: len(calls) == 1)
    second = asyncio.create_task(seeding(counted))
    await _until(lambda: starts.answered == 2 or second.done())
    release.set()
    results = await asyncio.gather(first, second)
    return results[0], results[1]


async def test_a_second_catalog_seed_waits_for_the_running_import_instead_of_failing(
    env: WorkflowEnvironment,
) -> None:
    products = seed.generate(5, seed=7)
    calls: list[UpsertBatchInput] = []
    release = asyncio.Event()

    @activity.defn(name="catalog.upsert_batch")
    async def upsert_batch(data: UpsertBatchInput) -> UpsertBatchResult:
        calls.append(data)
        await release.wait()
        return UpsertBatchResult(created=len(data.products))

    # The stand-in waits for an event, not a timer: no time may be skipped past its timeouts.
    with env.auto_time_skipping_disabled():
        async with Worker(
            env.client,
            task_queue=TASK_QUEUE,
            workflows=[ImportProductsWorkflow],
            workflow_runner=workflow_runner(),
            activities=[upsert_batch],
        ):
            first, second = await _twice_while_the_first_runs(
                env, lambda c: seed.import_all(c, products, 7), calls, release
            )
    assert len(calls) == 1, "the products were imported once"
    assert (first.total, first.created) == (second.total, second.created) == (5, 5)


async def test_a_second_stock_seed_waits_for_the_running_one_instead_of_failing(
    env: WorkflowEnvironment,
) -> None:
    products = seed.generate(5, seed=8)
    calls: list[SetStockInput] = []
    release = asyncio.Event()

    @activity.defn(name="inventory.set_stock")
    async def set_stock(data: SetStockInput) -> SetStockResult:
        calls.append(data)
        await release.wait()
        return SetStockResult(created=len(data.levels), updated=0, unchanged=0)

    with env.auto_time_skipping_disabled():
        async with Worker(
            env.client,
            task_queue=INVENTORY_QUEUE,
            workflows=[SeedStockWorkflow],
            workflow_runner=workflow_runner(),
            activities=[set_stock],
        ):
            first, second = await _twice_while_the_first_runs(
                env, lambda c: seed.seed_stock(c, products, 8), calls, release
            )
    assert len(calls) == 1, "the stock was set once"
    assert first == second == "stock: 5 created, 0 unchanged"


async def test_a_large_stock_seed_is_split_into_workflows_under_the_payload_limit(
    env: WorkflowEnvironment,
) -> None:
    products = seed.generate(5, seed=9)
    calls: list[SetStockInput] = []

    @activity.defn(name="inventory.set_stock")
    async def set_stock(data: SetStockInput) -> SetStockResult:
        calls.append(data)
        return SetStockResult(created=len(data.levels), updated=0, unchanged=0)

    async with Worker(
        env.client,
        task_queue=INVENTORY_QUEUE,
        workflows=[SeedStockWorkflow],
        workflow_runner=workflow_runner(),
        activities=[set_stock],
    ):
        summary = await seed.seed_stock(env.client, products, 9, part_size=2)
    assert summary == "stock: 5 created, 0 unchanged"
    assert sorted(len(c.levels) for c in calls) == [1, 2, 2]
    assert sorted(line.sku for c in calls for line in c.levels) == sorted(p.sku for p in products)
    # The default part stays under Temporal's 2 MiB payload limit.
    payload = env.client.data_converter.payload_converter.to_payloads(
        [SeedStockInput(key="k", levels=[StockLine("S" * 40, 120)] * seed.STOCK_PART)]
    )
    assert payload[0].ByteSize() < 2 * 1024 * 1024
