"""Inventory's Temporal names, shared by its activities, workflows and callers."""

from __future__ import annotations

TASK_QUEUE = "agora-inventory"

RESERVATION_SWEEP_WORKFLOW = "ReservationSweep"
RESERVATION_SWEEP_SCHEDULE_ID = "inventory-reservation-sweep"
# Earlier versions started one of these per reservation; kept registered to drain them.
RESERVATION_TIMEOUT_WORKFLOW = "ReservationTimeout"
RESTOCK_WORKFLOW = "Restock"
SEED_STOCK_WORKFLOW = "SeedStock"


def reservation_timeout_workflow_id(reservation_id: str) -> str:
    """The per-reservation timer of earlier versions (none are started any more)."""
    return f"reservation-{reservation_id}"


def restock_workflow_id(key: str) -> str:
    return f"restock-{key}"


def seed_stock_workflow_id(key: str) -> str:
    return f"seed-stock-{key}"
