"""The committed contracts/ package is exactly what protos/ generates, and it works.

Regenerates into a temporary directory with protos/generate.py and compares
file by file; then exercises the generated code: an event envelope round trip
and a grpclib server built from a generated servicer base on loopback.
"""

from __future__ import annotations

import asyncio
import datetime
import difflib
import importlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from contracts import full_name, message_class
from contracts.agora.catalog.v1 import (
    CatalogServiceBase,
    CatalogServiceStub,
    GetProductRequest,
    GetProductResponse,
    ListProductsRequest,
    Product,
    ProductCreated,
)
from contracts.agora.common.v1 import Money
from contracts.agora.events.v1 import EventEnvelope

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "contracts"
GENERATE = REPO / "protos" / "generate.py"

# Each service's read API as the servicer base / stub method names.
READ_APIS = {
    "identity": (
        "IdentityService",
        ["get_jwks", "introspect", "get_account", "sign_in", "refresh", "list_api_clients"],
    ),
    "catalog": (
        "CatalogService",
        ["get_product", "batch_get_products", "list_products", "price_lines"],
    ),
    "search": ("SearchService", ["search"]),
    "inventory": ("InventoryService", ["get_stock", "batch_get_stock"]),
    "orders": ("OrdersService", ["get_order", "list_orders"]),
    "payments": ("PaymentsService", ["get_payment", "ledger_balance"]),
    "audit": ("AuditService", ["query_events", "verify_chain", "export_order"]),
}

EVENTS = {
    "identity": [
        "AccountRegistered",
        "SignedIn",
        "TokenRevoked",
        "ApiClientCreated",
        "ApiClientRevoked",
        "SigningKeyRotated",
    ],
    "catalog": ["ProductCreated", "ProductUpdated", "PriceChanged", "ProductDeactivated"],
    "inventory": [
        "StockReserved",
        "ReservationReleased",
        "ReservationCommitted",
        "StockRestocked",
        "ReservationExpired",
    ],
    "orders": [
        "OrderPlaced",
        "OrderConfirmed",
        "OrderCancelled",
        "OrderCompleted",
        "OrderRefunded",
        "OrderRejected",
    ],
    "payments": [
        "PaymentAuthorized",
        "PaymentDeclined",
        "PaymentCaptured",
        "PaymentVoided",
        "PaymentRefunded",
    ],
}


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_contracts_match_a_fresh_generation(tmp_path: Path) -> None:
    out = tmp_path / "contracts"
    result = subprocess.run(
        [sys.executable, str(GENERATE), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"protos/generate.py failed:\n{result.stdout}{result.stderr}"

    committed, fresh = _tree(CONTRACTS), _tree(out)
    problems = [
        f"only in committed contracts/: {name}" for name in sorted(committed.keys() - fresh.keys())
    ]
    problems += [
        f"missing from contracts/: {name}" for name in sorted(fresh.keys() - committed.keys())
    ]
    for name in sorted(committed.keys() & fresh.keys()):
        if committed[name] != fresh[name]:
            diff = difflib.unified_diff(
                committed[name].decode(errors="replace").splitlines(),
                fresh[name].decode(errors="replace").splitlines(),
                f"contracts/{name} (committed)",
                f"contracts/{name} (generated)",
                lineterm="",
            )
            problems.append("\n".join(diff))
    if problems:
        pytest.fail(
            "contracts/ is stale; run `make protos`:\n" + "\n".join(problems), pytrace=False
        )


def test_event_envelope_round_trips_with_catalog_payload() -> None:
    created = ProductCreated(
        product=Product(
            sku="SKU-000042",
            title="Noise-cancelling headphones",
            brand="Acme",
            category="electronics/audio/headphones",
            attributes={"colour": "black"},
            price=Money(amount_minor=12999, currency="EUR"),
            active=True,
            version=1,
        )
    )
    occurred_at = datetime.datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=datetime.UTC)
    envelope = EventEnvelope(
        event_id="0b8f7c1e-4a8e-4bde-9d7e-3f1f2c9b8a11",
        event_type="catalog.ProductCreated",
        aggregate_type="product",
        aggregate_id="SKU-000042",
        sequence=1,
        occurred_at=occurred_at,
        producer="catalog",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        workflow_id="catalog-import-7",
        run_id="run-1",
        payload=bytes(created),
        payload_type=full_name(created),
    )

    decoded = EventEnvelope.parse(bytes(envelope))

    assert decoded == envelope
    assert decoded.occurred_at == occurred_at
    assert decoded.payload_type == "agora.catalog.v1.ProductCreated"
    payload = message_class(decoded.payload_type).parse(decoded.payload)
    assert isinstance(payload, ProductCreated)
    assert payload == created
    assert payload.product is not None and payload.product.price == Money(
        amount_minor=12999, currency="EUR"
    )


def test_unknown_payload_type_is_a_key_error() -> None:
    for name in ["agora.nope.v1.Thing", "agora.catalog.v1.Nope", "os.path", ""]:
        with pytest.raises(KeyError):
            message_class(name)


@pytest.mark.parametrize("service", sorted(READ_APIS))
def test_each_service_has_a_stub_and_servicer_base_for_its_read_api(service: str) -> None:
    module = importlib.import_module(f"contracts.agora.{service}.v1")
    prefix, methods = READ_APIS[service]
    base, stub = getattr(module, f"{prefix}Base"), getattr(module, f"{prefix}Stub")
    for method in methods:
        assert asyncio.iscoroutinefunction(getattr(base, method)), f"{prefix}Base.{method}"
        assert asyncio.iscoroutinefunction(getattr(stub, method)), f"{prefix}Stub.{method}"


@pytest.mark.parametrize("service", sorted(EVENTS))
def test_each_service_names_its_events(service: str) -> None:
    for event in EVENTS[service]:
        cls = message_class(f"agora.{service}.v1.{event}")
        assert full_name(cls) == f"agora.{service}.v1.{event}"


class _Catalog(CatalogServiceBase):
    async def get_product(self, message: GetProductRequest) -> GetProductResponse:
        if message.sku != "SKU-1":
            raise GRPCError(Status.NOT_FOUND, f"no product {message.sku}")
        return GetProductResponse(
            product=Product(sku="SKU-1", price=Money(amount_minor=100, currency="EUR"))
        )


def test_generated_servicer_and_stub_talk_over_loopback() -> None:
    async def scenario() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = Server([_Catalog()])
        await server.start(sock=sock)
        try:
            async with Channel("127.0.0.1", port) as channel:
                stub = CatalogServiceStub(channel, timeout=5.0)
                response = await stub.get_product(GetProductRequest(sku="SKU-1"))
                assert response.product is not None and response.product.sku == "SKU-1"

                with pytest.raises(GRPCError) as not_found:
                    await stub.get_product(GetProductRequest(sku="SKU-2"))
                assert not_found.value.status is Status.NOT_FOUND

                with pytest.raises(GRPCError) as unimplemented:
                    await stub.list_products(ListProductsRequest(category="electronics"))
                assert unimplemented.value.status is Status.UNIMPLEMENTED
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
