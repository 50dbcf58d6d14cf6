"""Values an HTTP client can craft that every rule must refuse in full: a path
parameter aiohttp decoded to end in a newline (`%0A`), one too long for a
Temporal workflow id, an integer beyond the wire's int64."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import make_mocked_request
from pydantic import ValidationError

from gateway import idempotency
from gateway.problems import Problem
from gateway.routing import path_param
from gateway.schemas_audit import VerifyQuery
from workers.catalog.errors import InvalidProduct
from workers.catalog.model import SKU_PATTERN, ProductData, validate
from workers.inventory.errors import InvalidInventoryRequest
from workers.inventory.model import check_sku
from workers.payments.psp import InvalidCardToken
from workers.payments.psp_sim import behaviour_of, tokenize

# `$` also matches before a final newline: every pattern here is used in full.
TRAILING = "SKU-1\n"


def param(value: str, pattern: re.Pattern[str]) -> str:
    request = make_mocked_request("PUT", "/v1/admin/products/x", match_info={"sku": value})
    return path_param(request, "sku", pattern, "a sku")


@pytest.mark.parametrize("value", [TRAILING, "a" * 1000, "", "SKU 1"])
def test_a_path_sku_that_breaks_the_rule_is_invalid(value: str) -> None:
    with pytest.raises(Problem) as refused:
        param(value, SKU_PATTERN)
    assert (refused.value.status, refused.value.code) == (400, "invalid-argument")


def test_a_path_sku_that_keeps_the_rule_passes() -> None:
    assert param("SKU-1.a_b", SKU_PATTERN) == "SKU-1.a_b"


def test_an_import_id_in_the_path_is_an_idempotency_key() -> None:
    request = make_mocked_request("GET", "/x", match_info={"import_id": "k" * 129})
    with pytest.raises(Problem):
        path_param(request, "import_id", idempotency.KEY_PATTERN, idempotency.RULE)


def test_a_sku_with_a_trailing_newline_is_refused_by_inventory_and_catalog() -> None:
    with pytest.raises(InvalidInventoryRequest):
        check_sku(TRAILING)
    product = ProductData(sku=TRAILING, title="t", category="a/b", price_minor=1, currency="EUR")
    with pytest.raises(InvalidProduct):
        validate(product)
    product.sku, product.category = "SKU-1", "a/b\n"
    with pytest.raises(InvalidProduct):
        validate(product)


def test_a_card_token_with_a_trailing_newline_is_not_a_token() -> None:
    token = tokenize("4242424242424242", 12, 2030).token
    assert behaviour_of(token)[1].last4 == "4242"
    with pytest.raises(InvalidCardToken):
        behaviour_of(token + "\n")


@pytest.mark.parametrize("value", [2**63, 10**30])
def test_an_audit_sequence_beyond_int64_is_refused(value: int) -> None:
    with pytest.raises(ValidationError):
        VerifyQuery.model_validate({"to_sequence": str(value)})
    assert VerifyQuery.model_validate({"to_sequence": str(2**63 - 1)}).to_sequence == 2**63 - 1
