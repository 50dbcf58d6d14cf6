"""Inventory's Temporal names, shared by its activities, workflows and callers."""

from __future__ import annotations

TASK_QUEUE = "agora-inventory"

RESERVATION_TIMEOUT_WORKFLOW = "ReservationTimeout"
RESTOCK_WORKFLOW = "Restock"
SEED_STOCK_WORKFLOW = "SeedStock"


def reservation_timeout_workflow_id(reservation_id: str) -> str:
    """One expiry timer per reservation: starting it again finds the first one."""
    return f"reservation-{reservation_id}"


def restock_workflow_id(key: str) -> str:
    return f"restock-{key}"


def seed_stock_workflow_id(key: str) -> str:
    return f"seed-stock-{key}"
