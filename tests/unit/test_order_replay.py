"""Committed histories replay on the current code: the order saga, the refund workflow
and the catalog import.

A change to OrderWorkflow that would break a saga already running in production
(a reordered, added or removed step without `workflow.patched`) fails here.
Refresh the histories only for a deliberate, versioned change:
`AGORA_RECORD_HISTORIES=1 make test-unit`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.catalog import ImportProductsWorkflow
from workflows.orders import OrderWorkflow, RefundOrderWorkflow

HISTORIES = sorted((Path(__file__).resolve().parent.parent / "histories").glob("*.json"))
WORKFLOWS = [OrderWorkflow, RefundOrderWorkflow, ImportProductsWorkflow]


def test_there_are_histories_to_replay() -> None:
    assert len([p for p in HISTORIES if p.name.startswith("order-")]) >= 8
    assert len([p for p in HISTORIES if p.name.startswith("import-")]) >= 2


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays_without_nondeterminism(path: Path) -> None:
    text = path.read_text()  # noqa: ASYNC240 - a small fixture file
    history = WorkflowHistory.from_json(f"replay-{path.stem}", text)
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
