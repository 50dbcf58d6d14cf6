"""The admin order search builds its visibility query only from typed, validated filters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agora import config
from gateway.codec import allowed_origins
from gateway.routes.admin_orders import AdminOrdersQuery, visibility_query

CUSTOMER = "3f1c2a9e-8d4b-4e7a-9b2c-1d0e5f6a7b8c"


def test_no_filter_lists_order_sagas_only() -> None:
    assert visibility_query(AdminOrdersQuery()) == 'WorkflowType = "Order"'


def test_filters_become_typed_search_attribute_clauses() -> None:
    filters = AdminOrdersQuery.model_validate(
        {
            "status": "REJECTED",
            "customer_id": CUSTOMER,
            "payment_outcome": "declined",
            "min_total_minor": "100",
            "max_total_minor": "5000",
            "running": "false",
        }
    )
    assert visibility_query(filters) == (
        'WorkflowType = "Order" AND OrderStatus = "REJECTED"'
        f' AND CustomerId = "{CUSTOMER}" AND PaymentOutcome = "declined"'
        ' AND OrderTotal >= 100 AND OrderTotal <= 5000 AND ExecutionStatus != "Running"'
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("customer_id", f'{CUSTOMER}" OR WorkflowType != "x'),
        ("customer_id", CUSTOMER.upper()),
        ("order_id", "' OR 1=1 --"),
        ("status", "Rejected"),
        ("payment_outcome", 'declined" OR "1"="1'),
        ("min_total_minor", "-1"),
        ("cursor", "a b"),
        ("query", 'OrderStatus = "REJECTED"'),
    ],
)
def test_anything_that_could_rewrite_the_query_is_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        AdminOrdersQuery.model_validate({field: value})


def test_codec_cors_allows_only_the_ui_origins() -> None:
    settings = config.load({"AGORA_PROFILE": "dev"})
    assert allowed_origins(settings) == {"http://127.0.0.1:18233", "http://localhost:18233"}
    assert settings.ui_codec_endpoint == "http://127.0.0.1:18080/codec"
    assert config.load({"AGORA_PROFILE": "prod"}).ui_codec_endpoint == ""
