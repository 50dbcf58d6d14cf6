"""The Idempotency-Key header: a key left out is minted, a key sent is kept or refused.

A key the gateway replaced with a fresh one would turn a client's retry into a
second write (a restock adding its units twice).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.context import PRINCIPAL
from gateway.deps import GATEWAY
from gateway.idempotency import HEADER, idempotency_key
from gateway.problems import Problem
from gateway.routes import inventory as inventory_routes
from gateway.schemas_inventory import RestockRequest
from gateway.tokens import Principal


def with_headers(headers: dict[str, str], app: web.Application | None = None) -> web.Request:
    path = "/v1/admin/inventory/SKU-1/restock"
    return make_mocked_request("POST", path, headers=headers, app=app, match_info={"sku": "SKU-1"})


def test_a_key_left_out_of_an_optional_write_is_minted() -> None:
    first = idempotency_key(with_headers({}), required=False)
    assert first != idempotency_key(with_headers({}), required=False)


def test_a_key_sent_is_kept() -> None:
    assert idempotency_key(with_headers({HEADER: "receipt-0001"}), required=False) == (
        "receipt-0001"
    )


@pytest.mark.parametrize("required", [False, True])
@pytest.mark.parametrize("key", ["", "short", "x" * 129, "has space"])
def test_a_key_that_breaks_the_rule_is_refused_never_replaced(key: str, required: bool) -> None:
    with pytest.raises(Problem) as refused:
        idempotency_key(with_headers({HEADER: key}), required=required)
    assert (refused.value.status, refused.value.code) == (400, "invalid-argument")


def test_a_key_left_out_of_a_required_write_is_refused() -> None:
    with pytest.raises(Problem) as refused:
        idempotency_key(with_headers({}), required=True)
    assert refused.value.code == "invalid-argument"


class RecordingUpstream:
    """Records the workflows a route starts; never reached when the key is refused."""

    def __init__(self) -> None:
        self.started: list[str] = []

    @contextlib.asynccontextmanager
    async def call(self, request: web.Request, name: str) -> AsyncIterator[float]:
        yield 1.0

    async def execute_workflow(self, run: Any, data: Any, **options: Any) -> Any:
        self.started.append(options["id"])
        raise Problem("upstream-timeout")


async def test_a_restock_retried_with_an_empty_key_starts_no_workflow() -> None:
    upstream = RecordingUpstream()
    app = web.Application()
    app[GATEWAY] = SimpleNamespace(upstream=upstream)  # type: ignore[assignment,misc]
    for _ in range(2):  # the first attempt and its retry
        request = with_headers({HEADER: ""}, app)
        request[PRINCIPAL] = Principal("admin-1", "account", frozenset(), "jti", "sid", 0, "kid")
        with pytest.raises(Problem) as refused:
            await inventory_routes.restock(request, RestockRequest(quantity=5))
        assert refused.value.code == "invalid-argument"
    assert upstream.started == []
