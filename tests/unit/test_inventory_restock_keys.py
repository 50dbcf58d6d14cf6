"""Which restock keys have an earlier, pre-per-caller form to look a retry up under."""

from __future__ import annotations

import pytest

from workers.inventory.stocking import pre_caller_admin_key

CALLER = "0b8f3c2e-6f1d-4c1a-9a57-2d3e4f5a6b7c"


@pytest.mark.parametrize("key", ["receipt-00000042", "rcpt:2026:000042"])
def test_an_admin_key_of_a_caller_had_the_bare_admin_form_before(key: str) -> None:
    assert pre_caller_admin_key(f"admin:{CALLER}:{key}") == f"admin:{key}"


@pytest.mark.parametrize(
    "key",
    [
        "admin:receipt-00000042",  # already the old form
        "admin:service-account:receipt-00000042",  # a caller that is not identity's
        f"{CALLER}:cancel-restock:0",  # the order saga's, never the admin route's
        f"load:{CALLER}",
    ],
)
def test_other_keys_have_no_earlier_form(key: str) -> None:
    assert pre_caller_admin_key(key) is None
