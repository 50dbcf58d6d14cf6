"""Every service exposes RED metrics per gRPC method, outbox backlog and age on /metrics."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest
from grpclib.exceptions import GRPCError

from agora.config import Settings
from agora.grpc import Channels
from contracts.agora.identity.v1 import GetAccountRequest, GetJwksRequest, IdentityServiceStub
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration


def scrape(settings: Settings, service: str) -> str:
    url = f"http://{settings.host}:{settings.side_port(service)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_grpc_calls_are_counted_by_method_and_code_with_latency_buckets(
    settings: Settings, identity_service
) -> None:
    channels = Channels(settings, caller="gateway")
    stub = IdentityServiceStub(channels.get("identity"))
    method = "/agora.identity.v1.IdentityService/GetJwks"
    refused = "/agora.identity.v1.IdentityService/GetAccount"
    text = scrape(settings, "identity")
    count = "rpc_server_duration_seconds_count"
    before = sample(text, count, rpc_method=method, rpc_code="OK") or 0
    refused_before = sample(text, count, rpc_method=refused, rpc_code="INVALID_ARGUMENT") or 0
    try:
        for _ in range(3):
            await stub.get_jwks(GetJwksRequest(), timeout=5)
        with pytest.raises(GRPCError):
            await stub.get_account(GetAccountRequest(account_id="not-a-uuid"), timeout=5)
    finally:
        channels.close()
    text = await asyncio.to_thread(scrape, settings, "identity")
    # Gateways of other tests fetch the JWKS now and then: at least these three.
    assert (sample(text, count, rpc_method=method, rpc_code="OK") or 0) >= before + 3
    # Nothing else asks for a malformed account id: exactly this one.
    assert sample(text, count, rpc_method=refused, rpc_code="INVALID_ARGUMENT") == (
        refused_before + 1
    )
    # Buckets are fine enough for a 5 ms read path and a 200 ms alert.
    assert (
        sample(text, "rpc_server_duration_seconds_bucket", rpc_method=method, le="0.005")
        is not None
    )
    assert (
        sample(text, "rpc_server_duration_seconds_bucket", rpc_method=method, le="0.2") is not None
    )


async def test_outbox_backlog_and_age_are_exposed_per_service(
    settings: Settings, identity_service
) -> None:
    async def both() -> str | None:
        text = await asyncio.to_thread(scrape, settings, "identity")
        exposed = (
            sample(text, "agora_outbox_backlog", service="identity") is not None
            and sample(text, "agora_outbox_oldest_age_seconds", service="identity") is not None
        )
        return text if exposed else None

    await eventually(both, within=10, what="identity's outbox backlog and age gauges")
