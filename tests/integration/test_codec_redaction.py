"""Support staff read histories through the codec server, never the secrets in them.

The real stack (identity, Temporal) and an in-process gateway: accounts are
registered as the platform registers them (the API for a customer, the operator's
workflow for an admin), their RegisterAccount inputs are read from Temporal's
history as stored, and `/codec/decode` answers a support token with everything
but the password hash.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from activities.orders import OrderLineInput, PricedLine, PricedOrder
from gateway.codec import REDACTED
from gateway.deps import Gateway
from tests.integration.gatewaykit import Api, TokenMinter, bearer, register_admin
from workers.orders.model import OrderInput
from workflows.identity import register_workflow_id

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]


async def stored_inputs(gw: Gateway, *emails: str) -> dict[str, Any]:
    """The RegisterAccount inputs as Temporal stores them, in the codec protocol's JSON."""
    raw = await Client.connect(
        gw.settings.temporal_address, namespace=gw.settings.temporal_namespace
    )
    payloads = []
    for email in emails:
        history = await raw.get_workflow_handle(register_workflow_id(email)).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        payloads.extend(json_format.MessageToDict(started.input)["payloads"])
    return {"payloads": payloads}


async def decoded_for_support(client: TestClient, minter: TokenMinter, sealed: Any) -> list[Any]:
    support = bearer(minter.token(scope="profile support"))
    response = await client.post("/codec/decode", json=sealed, headers=support)
    assert response.status == 200, await response.text()
    return [base64.b64decode(p["data"]) for p in (await response.json())["payloads"]]


async def test_support_decodes_registrations_without_their_password_hashes(
    gateway: tuple[Gateway, TestClient], minter: TokenMinter
) -> None:
    gw, client = gateway
    customer = (await Api(client).register())["email"]
    admin = await register_admin(gw)
    sealed = await stored_inputs(gw, customer, admin)
    # The history does hold the hashes: the gateway's own client decrypts them.
    as_stored = [json_format.ParseDict(p, Payload()) for p in sealed["payloads"]]
    stored = await gw.upstream.temporal.data_converter.decode(as_stored)
    assert all(value["password_hash"].startswith("$argon2id$") for value in stored)

    shown = [json.loads(data) for data in await decoded_for_support(client, minter, sealed)]
    assert [value["password_hash"] for value in shown] == [REDACTED, REDACTED]
    assert [value["email"] for value in shown] == [customer, admin]
    assert [value["roles"] for value in shown] == [["customer"], ["admin"]]
    for value, original in zip(shown, stored, strict=True):
        assert {**original, "password_hash": REDACTED} == value


async def test_support_decodes_order_payloads_as_written_but_the_card_token(
    gateway: tuple[Gateway, TestClient], minter: TokenMinter
) -> None:
    gw, client = gateway
    order = OrderInput(
        "o-1", "c-1", "k-1", [OrderLineInput("SKU-1", 2)], "EUR", "tok_ok_visa_4242_0a"
    )
    priced = PricedOrder([PricedLine("SKU-1", "Wok", 2, 2450, 4900)], "EUR", 4900)
    converter = gw.upstream.temporal.data_converter
    sealed = [json_format.MessageToDict(p) for p in await converter.encode([order, priced])]
    order_data, priced_data = await decoded_for_support(client, minter, {"payloads": sealed})
    written_order, written_priced = converter.payload_converter.to_payloads([order, priced])
    assert json.loads(order_data) == {**json.loads(written_order.data), "card_token": REDACTED}
    assert priced_data == written_priced.data
