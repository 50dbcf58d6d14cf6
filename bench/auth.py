"""Scenario `auth`: the gateway's auth stage in-process, and GET /v1/me end to end.

* auth stage: JWT verify (joserfc, EdDSA) + scope check + the one Redis call
  (revocation + GCRA), 5,000 iterations in this process against the real
  Redis and identity's real keys.
* end to end: an authenticated GET /v1/me through a gateway process (auth,
  rate limit, gRPC GetAccount over mTLS to identity, Postgres) over loopback,
  2,000 requests at concurrency 8, with the Server-Timing stages broken out.
* baselines in the same run: a bare aiohttp handler in its own process under
  the same load, and a bare mTLS grpclib GetAccount call.

The gateway here is a process of its own on free ports with limits high enough
not to throttle the load (the stack's gateway, if any, is left alone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from typing import Any

import aiohttp

from agora.config import Settings
from bench.processes import free_port, identity_running, process
from bench.stats import Row, row
from contracts.agora.identity.v1 import GetAccountRequest
from gateway.app import close_gateway, create_gateway

AUTH_ITERATIONS = 5_000
E2E_REQUESTS = 2_000
CONCURRENCY = 8
WARMUP = 200
UNTHROTTLED = "1000000/s burst 1000000"
TARGET_AUTH_P95_MS = 0.3
_STAGE = re.compile(r"(\w+);dur=([\d.]+)")


async def sign_in(http: aiohttp.ClientSession, base: str, email: str, password: str) -> str:
    """An access token for an existing account, through the gateway."""
    async with http.post(
        f"{base}/v1/auth/signin", json={"email": email, "password": password}
    ) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["access_token"]
        return token


async def _session_token(base: str) -> tuple[str, str]:
    """A new customer account signed up and signed in: its id and an access token."""
    email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
    password = "bench password 123"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v1/accounts",
            json={"email": email, "password": password, "display_name": "Bench"},
        ) as response:
            assert response.status == 201, await response.text()
            account_id = (await response.json())["account_id"]
        return account_id, await sign_in(http, base, email, password)


async def _auth_stage(settings: Settings, token: str) -> list[Row]:
    unthrottled = dataclasses.replace(
        settings, rate_limits={name: UNTHROTTLED for name in settings.rate_limits}
    )
    gw = await create_gateway(unthrottled)
    try:
        await gw.jwks.refresh(force=True)
        required = frozenset({"profile"})
        verify, admit, total = [], [], []
        for i in range(WARMUP + AUTH_ITERATIONS):
            t0 = time.perf_counter()
            principal = await gw.verifier.verify(token)
            assert required <= principal.scopes
            t1 = time.perf_counter()
            admission = await gw.admitter.admit(
                "read", principal.subject, jti=principal.jti, sid=principal.sid
            )
            t2 = time.perf_counter()
            assert admission.verdict == 0, admission
            if i >= WARMUP:
                verify.append(t1 - t0)
                admit.append(t2 - t1)
                total.append(t2 - t0)
        return [
            row("auth stage (verify + scope + revocation/rate-limit call)", total),
            row("  of which JWT verify + claims (joserfc EdDSA)", verify),
            row("  of which Redis EVALSHA (revocation + GCRA)", admit),
        ]
    finally:
        await close_gateway(gw)


async def _load(url: str, headers: dict[str, str], n: int) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    timings: list[str] = []
    statuses: dict[int, int] = {}
    queue = iter(range(n))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                async with http.get(url, headers=headers) as response:
                    await response.read()
                    latencies.append(time.perf_counter() - started)
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    timings.append(response.headers.get("Server-Timing", ""))

        # Warm the pool and the server first, outside the measurement.
        for _ in range(WARMUP // CONCURRENCY):
            async with http.get(url, headers=headers) as response:
                await response.read()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses under load: {statuses}")
    return latencies, timings


def _stages(timings: list[str]) -> dict[str, list[float]]:
    stages: dict[str, list[float]] = {}
    for header in timings:
        for stage, ms in _STAGE.findall(header):
            stages.setdefault(stage, []).append(float(ms) / 1000)
    return stages


async def _bare_grpc(settings: Settings, account_id: str) -> Row:
    from agora.grpc import Channels
    from contracts.agora.identity.v1 import IdentityServiceStub

    channels = Channels(settings, caller="gateway")
    stub = IdentityServiceStub(channels.get("identity"))
    try:
        samples = []
        for i in range(WARMUP + E2E_REQUESTS // 2):
            started = time.perf_counter()
            await stub.get_account(GetAccountRequest(account_id=account_id), timeout=2)
            if i >= WARMUP:
                samples.append(time.perf_counter() - started)
        return row("baseline: bare grpclib GetAccount (mTLS, sequential)", samples)
    finally:
        channels.close()


async def run(settings: Settings) -> dict[str, Any]:
    logs = settings.state_dir / "logs"
    with identity_running(settings):
        gateway_port, side_port, bare_port = free_port(), free_port(), free_port()
        env = {
            "AGORA_PROFILE": settings.profile,
            "AGORA_PORT_GATEWAY": str(gateway_port),
            "AGORA_PORT_GATEWAY_SIDE": str(side_port),
            "AGORA_TRACING": "off",
            "AGORA_LOG_LEVEL": "WARNING",
            **{f"AGORA_RATE_LIMIT_{name.upper()}": UNTHROTTLED for name in settings.rate_limits},
        }
        base = f"http://{settings.host}:{gateway_port}"
        with (
            process("gateway", ["-m", "gateway"], f"{base}/readyz", logs, env=env),
            process(
                "bare-aiohttp",
                ["-m", "bench.bare", str(bare_port)],
                f"http://127.0.0.1:{bare_port}/healthz",
                logs,
            ),
        ):
            account_id, token = await _session_token(base)
            auth_rows = await _auth_stage(settings, token)
            headers = {"Authorization": f"Bearer {token}"}
            me, timings = await _load(f"{base}/v1/me", headers, E2E_REQUESTS)
            bare, _ = await _load(f"http://127.0.0.1:{bare_port}/v1/me", {}, E2E_REQUESTS)
            grpc_row = await _bare_grpc(settings, account_id)
    stages = _stages(timings)
    e2e_rows = [
        row(f"GET /v1/me end to end (concurrency {CONCURRENCY})", me),
        *(
            row(f"  gateway stage: {stage} (Server-Timing)", stages[stage])
            for stage in ("auth", "ratelimit", "upstream", "total")
            if stage in stages
        ),
        row(f"baseline: bare aiohttp handler (concurrency {CONCURRENCY})", bare),
        grpc_row,
    ]
    auth_p95 = auth_rows[0].p95_ms
    return {
        "title": "Gateway auth stage and authenticated read",
        "rows": [*auth_rows, *e2e_rows],
        "targets": [
            {
                "name": "auth stage p95",
                "target_ms": TARGET_AUTH_P95_MS,
                "measured_ms": auth_p95,
                "met": auth_p95 <= TARGET_AUTH_P95_MS,
            }
        ],
    }
