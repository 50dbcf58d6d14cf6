"""Committed histories replay on the current code: the order saga, the refund workflow,
the catalog import and a price change, identity's registration, key rotation and API
client revocation, inventory's sweep, reservation timer, restock and seeding, search's
reindex and audit's checkpoint (`audit-checkpoint-v1`: partitions made before signing, as before
the `audit-checkpoint-signed-first` patch).

A change to OrderWorkflow that would break a saga already running in production
(a reordered, added or removed step without `workflow.patched`) fails here.
Refresh the histories only for a deliberate, versioned change:
`AGORA_RECORD_HISTORIES=1 make test-unit`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from agora.temporal import workflow_runner
from workflows.audit import SignCheckpointWorkflow
from workflows.catalog import ChangePriceWorkflow, ImportProductsWorkflow
from workflows.identity import (
    RegisterAccountWorkflow,
    RevokeApiClientWorkflow,
    RotateSigningKeyWorkflow,
)
from workflows.inventory import (
    ReservationSweepWorkflow,
    ReservationTimeoutWorkflow,
    RestockWorkflow,
    SeedStockWorkflow,
)
from workflows.orders import OrderWorkflow, RefundOrderWorkflow
from workflows.search import ReindexWorkflow

HISTORIES = sorted((Path(__file__).resolve().parent.parent / "histories").glob("*.json"))
WORKFLOWS = [
    OrderWorkflow,
    RefundOrderWorkflow,
    ImportProductsWorkflow,
    RegisterAccountWorkflow,
    RotateSigningKeyWorkflow,
    ReindexWorkflow,
    SignCheckpointWorkflow,
    ChangePriceWorkflow,
    RevokeApiClientWorkflow,
    ReservationSweepWorkflow,
    ReservationTimeoutWorkflow,
    RestockWorkflow,
    SeedStockWorkflow,
]
SAGA_TESTS = Path(__file__).resolve().with_name("test_order_saga.py")
# Parsed once, as the module is collected (see CONFIG_TREE in test_config_env.py).
SAGA_TESTS_TREE = ast.parse(SAGA_TESTS.read_text())


def test_there_are_histories_to_replay() -> None:
    assert len([p for p in HISTORIES if p.name.startswith("order-")]) >= 8
    assert len([p for p in HISTORIES if p.name.startswith("import-")]) >= 2
    for kind in (
        "identity-register",
        "identity-rotation",
        "identity-revoke-api-client",
        "search-reindex",
        "audit-checkpoint-v1",
        "catalog-change-price",
        "inventory-sweep",
        "inventory-reservation-timeout",
        "inventory-restock",
        "inventory-seed",
    ):
        assert any(p.stem == kind for p in HISTORIES), kind


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays_without_nondeterminism(path: Path) -> None:
    text = path.read_text()  # noqa: ASYNC240 - a small fixture file
    history = WorkflowHistory.from_json(f"replay-{path.stem}", text)
    result = await Replayer(workflows=WORKFLOWS, workflow_runner=workflow_runner()).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


def _parameters(function: ast.AsyncFunctionDef | ast.FunctionDef) -> list[str]:
    return [a.arg for a in function.args.args]


def _argument(call: ast.Call, index: int, name: str) -> ast.expr | None:
    """The argument a call passes for parameter `name` (at `index`), if any."""
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == name), None)


def _parametrized(function: ast.AsyncFunctionDef | ast.FunctionDef) -> list[dict[str, object]]:
    """The values of a test's @pytest.mark.parametrize cases, one dict per case."""
    cases: list[dict[str, object]] = [{}]
    for decorator in function.decorator_list:
        if not (
            isinstance(decorator, ast.Call)
            and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "parametrize"
        ):
            continue
        names = ast.literal_eval(decorator.args[0])
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        values = ast.literal_eval(decorator.args[1])
        rows = [row if len(names) > 1 else (row,) for row in values]
        cases = [{**case, **dict(zip(names, row, strict=True))} for case in cases for row in rows]
    return cases


def _names(
    argument: ast.expr, function: ast.AsyncFunctionDef | ast.FunctionDef, passed_on: bool
) -> set[str]:
    """The history names an argument stands for (none: a test that records nothing)."""
    if isinstance(argument, ast.Constant) and argument.value is None:
        return set()
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return {argument.value}
    if isinstance(argument, ast.Name) and passed_on:
        return set()  # a helper passing its caller's name on: the callers are read
    if isinstance(argument, ast.JoinedStr):
        names = set()
        for case in _parametrized(function):
            parts = []
            for part in argument.values:
                if isinstance(part, ast.Constant):
                    parts.append(str(part.value))
                elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name):
                    parts.append(str(case[part.value.id]))
                else:
                    raise AssertionError(f"{function.name}: a history name this test cannot read")
            names.add("".join(parts))
        return names
    raise AssertionError(
        f"{function.name} (line {argument.lineno}): a history name this test cannot read;"
        " pass a literal, or an f-string over the test's parametrize values"
    )


def histories_the_saga_tests_record() -> set[str]:
    """The files test_order_saga.py records (keep_history, called directly or through a
    helper such as `run` that passes its own parameter on), read from its source."""
    functions = [
        node
        for node in ast.walk(SAGA_TESTS_TREE)
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
    ]
    by_name = {f.name: f for f in functions}
    # Each recorder, and where it takes the history's name.
    recorders = {"keep_history": (_parameters(by_name["keep_history"]).index("name"), "name")}
    grown = True
    while grown:
        grown = False
        for function in functions:
            if function.name in recorders:
                continue
            for call in ast.walk(function):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
                    continue
                if call.func.id not in recorders:
                    continue
                argument = _argument(call, *recorders[call.func.id])
                if isinstance(argument, ast.Name) and argument.id in _parameters(function):
                    parameter = argument.id
                    recorders[function.name] = (_parameters(function).index(parameter), parameter)
                    grown = True
                    break
    recorded = set()
    for function in functions:
        for call in ast.walk(function):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                if call.func.id in recorders:
                    argument = _argument(call, *recorders[call.func.id])
                    if argument is not None:
                        recorded |= _names(argument, function, function.name in recorders)
    return {f"order-{name}.json" for name in recorded}


def test_every_history_the_saga_tests_record_is_committed() -> None:
    # A saga test that records a history nobody committed covers nothing in the replay
    # test ("cancel-awaiting-payment" was recorded, never committed, for a while).
    recorded = histories_the_saga_tests_record()
    assert {"order-happy.json", "order-cancel-at-capture.json"} <= recorded  # the scan reads
    assert len(recorded) >= 25
    missing = recorded - {path.name for path in HISTORIES}
    assert not missing, f"record and commit them (AGORA_RECORD_HISTORIES=1): {sorted(missing)}"
