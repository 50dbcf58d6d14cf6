"""Crafted cursors and bounds on the read routes: a clear refusal (400 / INVALID_ARGUMENT),
never an error deeper down (an UNKNOWN from the service, a 500 at the edge)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import ValidationError

from agora.errors import InvalidArgument
from gateway.routes.admin_orders import AdminOrdersQuery
from gateway.schemas_audit import AuditEventsQuery
from workers.audit.envelopes import MAX_ID_BYTES
from workers.catalog.reads import decode_cursor as catalog_cursor
from workers.identity.apiclients import ApiClients, _decode_cursor
from workers.orders.api import decode_cursor as orders_cursor


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        b64(["2024-01-01T00:00:00+00:00", 1]),  # an int where the order id goes
        b64([1, "0e8c4b0a-3c1f-4d3e-9d7b-0c6f6a1b2c3d"]),
        b64(["2024-01-01T00:00:00", "0e8c4b0a-3c1f-4d3e-9d7b-0c6f6a1b2c3d"]),
    ],
)
def test_a_crafted_orders_cursor_is_invalid(cursor: str) -> None:
    with pytest.raises(InvalidArgument):
        orders_cursor(cursor)


def test_a_catalog_cursor_with_a_lone_surrogate_is_invalid() -> None:
    # json.loads takes "\ud800"; PostgreSQL cannot encode it as UTF-8.
    with pytest.raises(InvalidArgument):
        catalog_cursor(b64(b'["books","\\ud800"]'))
    assert catalog_cursor(b64(["books", "SKU-1"])) == ("books", "SKU-1")


@pytest.mark.parametrize(
    "raw",
    [
        b'["0001-01-01T00:00:00+14:00","0e8c4b0a-3c1f-4d3e-9d7b-0c6f6a1b2c3d"]',  # < year 1 UTC
        b'["2024-01-01T00:00:00","0e8c4b0a-3c1f-4d3e-9d7b-0c6f6a1b2c3d"]',  # no offset
        b"\xff\xfe|x",
    ],
)
def test_a_crafted_api_client_cursor_is_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidArgument):
        _decode_cursor(base64.urlsafe_b64encode(raw).decode())


@pytest.mark.parametrize("size", [-1, -5, 201])
async def test_an_api_client_page_size_out_of_range_is_invalid(size: int) -> None:
    clients = ApiClients(pool=None, box=None)  # type: ignore[arg-type]  # refused before any query
    with pytest.raises(InvalidArgument):
        await clients.page("", False, size, "")


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59+00:00", "9999-12-31T23:00:00-05:00"]
)
def test_an_audit_query_time_out_of_range_is_refused(when: str) -> None:
    with pytest.raises(ValidationError, match="out of range"):
        AuditEventsQuery.model_validate({"start": when})
    assert AuditEventsQuery.model_validate({"start": "2026-01-01T00:00:00+01:00"}).start


@pytest.mark.parametrize("status", ["REFUNDED", "PARTIALLY_REFUNDED", "CANCELLED"])
def test_admin_search_filters_on_every_status_the_saga_writes(status: str) -> None:
    assert AdminOrdersQuery.model_validate({"status": status}).status == status


@pytest.mark.parametrize("field", ["aggregate_id", "aggregate_type", "workflow_id"])
def test_an_audit_query_takes_every_id_the_intake_records(field: str) -> None:
    # The intake records ids up to MAX_ID_BYTES of UTF-8; the edge once capped them at 200
    # characters, so an event with a longer id was recorded but could not be asked for.
    longest = "é" * (MAX_ID_BYTES // 2)
    assert getattr(AuditEventsQuery.model_validate({field: longest}), field) == longest
    with pytest.raises(ValidationError, match=f"longer than {MAX_ID_BYTES} bytes"):
        AuditEventsQuery.model_validate({field: longest + "x"})
    with pytest.raises(ValidationError):
        AuditEventsQuery.model_validate({field: ""})
