"""Inventory's Temporal names, shared by its activities, workflows and callers."""

from __future__ import annotations

TASK_QUEUE = "agora-inventory"

RESERVATION_SWEEP_WORKFLOW = "ReservationSweep"
RESERVATION_SWEEP_SCHEDULE_ID = "inventory-reservation-sweep"
# Earlier versions started one of these per reservation; kept registered to drain them.
RESERVATION_TIMEOUT_WORKFLOW = "ReservationTimeout"
RESTOCK_WORKFLOW = "Restock"
SEED_STOCK_WORKFLOW = "SeedStock"


def restock_workflow_id(key: str) -> str:
    return f"restock-{key}"


def seed_stock_workflow_id(key: str) -> str:
    return f"seed-stock-{key}"
