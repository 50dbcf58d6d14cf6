"""Admission and input: rate limits, Redis outages, request bodies, and the mTLS inside.

None of the refusals here reaches a service.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from prometheus_client.parser import text_string_to_metric_families

from agora.config import Settings
from contracts.agora.identity.v1 import GetJwksRequest, IdentityServiceStub
from gateway.deps import Gateway
from stack.base import Context
from tests.integration.conftest import ServiceProcess, stack_component, tail
from tests.integration.gatewaykit import (
    TokenMinter,
    bearer,
    no_upstream_call,
    problem,
    running_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]


def dead_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Rate limits ------------------------------------------------------------------


async def test_rate_limit_counts_down_then_answers_429_until_the_next_token(
    settings: Settings, identity: ServiceProcess | None, minter: TokenMinter
) -> None:
    # One token back every 20 minutes: nothing refills while the test runs, so the
    # countdown is exact and the retry time follows from the measured elapsed time.
    rates = {"read": "3/h burst 3", "write": "3/h burst 3", "auth": "3/h burst 3"}
    interval_s = 1200
    async with running_gateway(settings, minter, rate_limits=rates) as (gw, client):
        # A minted account identity does not know: admitted requests get its 404.
        subject = str(uuid.uuid4())
        token = minter.token(sub=subject)
        started = time.monotonic()
        for remaining in (2, 1, 0):
            response = await client.get("/v1/me", headers=bearer(token))
            assert response.status == 404, await response.text()
            assert response.headers["RateLimit-Limit"] == "3"
            assert response.headers["RateLimit-Remaining"] == str(remaining)
        with no_upstream_call(gw):
            limited = await client.get("/v1/me", headers=bearer(token))
            body = await problem(limited, 429, "rate-limited")
        elapsed = time.monotonic() - started
        assert "read" in body["detail"]
        assert limited.headers["RateLimit-Remaining"] == "0"
        # The first token spent comes back one interval after it was taken.
        retry_after = int(limited.headers["Retry-After"])
        assert interval_s - elapsed <= retry_after <= interval_s
        # The bucket is full again once all three have come back.
        reset = int(limited.headers["RateLimit-Reset"])
        assert 3 * interval_s - elapsed <= reset <= 3 * interval_s
        # Another principal has its own bucket.
        other = await client.get("/v1/me", headers=bearer(minter.token()))
        assert other.status == 404
        assert other.headers["RateLimit-Remaining"] == "2"
        await gw.redis.delete(f"gateway:rl:read:{subject}")


async def test_rate_limit_admits_again_after_retry_after(
    settings: Settings, identity: ServiceProcess | None, minter: TokenMinter
) -> None:
    # One token back every 5 s, so the recovery is quick; how many requests get in
    # before the 429 depends on the machine's speed, so they are not counted.
    rates = {"read": "12/m burst 3", "write": "12/m burst 3", "auth": "12/m burst 3"}
    interval_s = 5
    async with running_gateway(settings, minter, rate_limits=rates) as (_, client):
        token = minter.token()
        started = time.monotonic()
        limited = await first_refusal(client, token, attempts=20)
        elapsed = time.monotonic() - started
        # At least three were admitted from a full bucket, so the next token is due
        # within one interval of the first request.
        retry_after = int(limited.headers["Retry-After"])
        assert interval_s - elapsed <= retry_after <= interval_s
        await asyncio.sleep(retry_after)  # the wait the client was told to make
        recovered = await client.get("/v1/me", headers=bearer(token))
        assert recovered.status == 404, await recovered.text()


async def first_refusal(client: TestClient, token: str, *, attempts: int) -> ClientResponse:
    """Read until the rate limit answers 429; fail if it never does."""
    for _ in range(attempts):
        response = await client.get("/v1/me", headers=bearer(token))
        if response.status == 429:
            await problem(response, 429, "rate-limited")
            return response
        assert response.status == 404, await response.text()
    raise AssertionError(f"no 429 after {attempts} requests")


async def test_anonymous_routes_are_limited_per_client_address(
    settings: Settings, identity: ServiceProcess | None
) -> None:
    rates = {"read": "1/s burst 1", "write": "1/s burst 1", "auth": "1/m burst 2"}
    async with running_gateway(settings, rate_limits=rates) as (gw, client):
        # A fresh principal key per run: the address is the same across tests.
        await gw.redis.delete("gateway:rl:auth:ip:127.0.0.1")
        for _ in range(2):
            response = await client.post(
                "/v1/auth/signin", json={"email": "a@b.cd", "password": "x"}
            )
            assert response.status == 401
        with no_upstream_call(gw):
            response = await client.post(
                "/v1/auth/signin", json={"email": "a@b.cd", "password": "x"}
            )
            await problem(response, 429, "rate-limited")
        assert int(response.headers["Retry-After"]) > 1  # one per minute
        await gw.redis.delete("gateway:rl:auth:ip:127.0.0.1")


async def test_password_sign_ins_are_limited_per_account_too(
    settings: Settings, identity: ServiceProcess | None
) -> None:
    rates = {"auth": "1000/s burst 1000", "signin": "1/m burst 2"}
    async with running_gateway(settings, rate_limits=rates) as (gw, client):
        email = f"guess-{time.time_ns()}@example.com"
        for presented in (email, email.upper()):  # identity matches it case-insensitively
            response = await client.post(
                "/v1/auth/signin", json={"email": presented, "password": "guess"}
            )
            assert response.status == 401, await response.text()
        with no_upstream_call(gw):
            response = await client.post(
                "/v1/auth/signin", json={"email": f" {email} ", "password": "guess"}
            )
            body = await problem(response, 429, "rate-limited")
        assert "this account" in body["detail"]
        assert int(response.headers["Retry-After"]) > 1  # one per minute
        other = await client.post(
            "/v1/auth/signin", json={"email": f"other-{email}", "password": "guess"}
        )
        assert other.status == 401


async def test_a_per_account_refusal_carries_the_per_account_rate_limit_headers(
    settings: Settings, identity: ServiceProcess | None
) -> None:
    # The per-address bucket admitted the request; the per-account one refused it.
    # The client is told about the one that refused: its limit, nothing remaining.
    rates = {"auth": "1000/s burst 1000", "signin": "1/m burst 2"}
    async with running_gateway(settings, rate_limits=rates) as (gw, client):
        signin = {"email": f"limited-{time.time_ns()}@example.com", "password": "guess"}
        for _ in range(2):
            response = await client.post("/v1/auth/signin", json=signin)
            assert response.status == 401, await response.text()
        with no_upstream_call(gw):
            response = await client.post("/v1/auth/signin", json=signin)
            await problem(response, 429, "rate-limited")
        assert response.headers["RateLimit-Limit"] == "2"
        assert response.headers["RateLimit-Remaining"] == "0"
        assert int(response.headers["RateLimit-Reset"]) > 1  # one per minute


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(
    settings: Settings, identity: ServiceProcess | None
) -> None:
    rates = {"auth": "1/m burst 1", "signin": "1000/s burst 1000"}
    proxied = {"rate_limits": rates, "gateway_trusted_proxies": ("127.0.0.1",)}
    async with running_gateway(settings, **proxied) as (gw, client):
        clients = [f"198.51.100.{n}" for n in (7, 8)]
        for address in clients:
            await gw.redis.delete(f"gateway:rl:auth:ip:{address}")
        signin = {"email": f"proxied-{time.time_ns()}@example.com", "password": "x"}
        for address in clients:  # one bucket each, not one for the proxy
            response = await client.post(
                "/v1/auth/signin", json=signin, headers={"X-Forwarded-For": address}
            )
            assert response.status == 401, await response.text()
        with no_upstream_call(gw):
            again = await client.post(
                "/v1/auth/signin", json=signin, headers={"X-Forwarded-For": clients[0]}
            )
            await problem(again, 429, "rate-limited")
            # Through the proxy, a request must say whom it forwards (one address).
            for headers in ({}, {"X-Forwarded-For": "203.0.113.1, 198.51.100.7"}):
                response = await client.post("/v1/auth/signin", json=signin, headers=headers)
                await problem(response, 400, "invalid-argument")
        assert (await client.get("/healthz")).status == 200  # probes do not pass the proxy
        for address in clients:
            await gw.redis.delete(f"gateway:rl:auth:ip:{address}")
    # A peer that is not the trusted proxy cannot pick its bucket with the header.
    untrusted = {"rate_limits": rates, "gateway_trusted_proxies": ("10.0.0.0/8",)}
    async with running_gateway(settings, **untrusted) as (gw, client):
        response = await client.post(
            "/v1/auth/signin", json=signin, headers={"X-Forwarded-For": "198.51.100.9"}
        )
        await problem(response, 400, "invalid-argument")


async def test_the_addresses_of_one_ipv6_64_share_a_bucket(
    settings: Settings, identity: ServiceProcess | None
) -> None:
    # A subscriber holds a whole /64: rotating through its addresses is one client.
    rates = {"auth": "1/m burst 1", "signin": "1000/s burst 1000"}
    proxied = {"rate_limits": rates, "gateway_trusted_proxies": ("127.0.0.1",)}
    bucket = "gateway:rl:auth:ip:2001:db8:0:1::/64"
    async with running_gateway(settings, **proxied) as (gw, client):
        await gw.redis.delete(bucket, "gateway:rl:auth:ip:2001:db8:0:2::/64")
        signin = {"email": f"v6-{time.time_ns()}@example.com", "password": "x"}
        first = await client.post(
            "/v1/auth/signin", json=signin, headers={"X-Forwarded-For": "2001:db8:0:1::1"}
        )
        assert first.status == 401, await first.text()
        with no_upstream_call(gw):
            rotated = await client.post(
                "/v1/auth/signin",
                json=signin,
                headers={"X-Forwarded-For": "2001:db8:0:1:ffff:1234:5678:9abc"},
            )
            await problem(rotated, 429, "rate-limited")
        other = await client.post(
            "/v1/auth/signin", json=signin, headers={"X-Forwarded-For": "2001:db8:0:2::1"}
        )
        assert other.status == 401, await other.text()  # another /64, another client
        await gw.redis.delete(bucket, "gateway:rl:auth:ip:2001:db8:0:2::/64")


# Redis unreachable --------------------------------------------------------------


async def test_without_redis_reads_fail_open_and_everything_else_fails_closed(
    settings: Settings, identity: ServiceProcess | None, minter: TokenMinter
) -> None:
    ports = {**settings.ports, "redis": dead_port()}
    async with running_gateway(settings, minter, ports=ports) as (gw, client):
        token = minter.token(ptype="api_client", scope="profile")
        # An API client's read needs its nonce recorded: closed.
        response = await client.get("/v1/me", headers=bearer(token))
        await problem(response, 401, "signature-required")

        # A plain read is served (no rate limit, no revocation check), and counted.
        read_token = minter.token(scope="profile")
        response = await client.get("/v1/me", headers=bearer(read_token))
        # Served: identity answers for the made-up account (404), proving it was admitted.
        assert response.status == 404, await response.text()
        assert "RateLimit-Limit" not in response.headers

        # The same read by a staff token is closed: its revocation must be checked
        # (a handler may show such a caller more, e.g. any customer's order).
        for scope in ("admin profile", "identity:admin profile"):
            with no_upstream_call(gw):
                response = await client.get("/v1/me", headers=bearer(minter.token(scope=scope)))
                await problem(response, 503, "dependency-unavailable")

        # Writes, auth routes and admin routes fail closed, without calling a service.
        admin = minter.token(scope="identity:admin profile")
        with no_upstream_call(gw):
            refused = [
                await client.post(
                    "/v1/auth/signin", json={"email": "a@b.cd", "password": "whatever"}
                ),
                await client.get("/v1/admin/api-clients", headers=bearer(admin)),
                await client.delete("/v1/admin/api-clients/x", headers=bearer(admin)),
                await client.post("/v1/auth/signout", headers=bearer(read_token)),
            ]
            for response in refused:
                await problem(response, 503, "dependency-unavailable")
                assert response.headers["Retry-After"] == "1"
        # Still ready: it serves reads, and a Redis failover taking every gateway out of
        # rotation would serve nothing at all (the refusals above say Redis is down).
        ready = await client.get("/readyz")
        assert ready.status == 200, await ready.text()
        assert "redis" not in (await ready.json())["checks"]


# Request bodies -------------------------------------------------------------------


async def test_oversized_body(gateway: tuple[Gateway, TestClient]) -> None:
    gw, client = gateway
    body = json.dumps({"refresh_token": "x" * (gw.settings.gateway_max_body_bytes + 1)})
    with no_upstream_call(gw):
        response = await client.post(
            "/v1/auth/refresh", data=body, headers={"Content-Type": "application/json"}
        )
        await problem(response, 413, "body-too-large")


async def test_malformed_json(gateway: tuple[Gateway, TestClient]) -> None:
    gw, client = gateway
    with no_upstream_call(gw):
        response = await client.post(
            "/v1/auth/refresh",
            data=b'{"refresh_token": ',
            headers={"Content-Type": "application/json"},
        )
        await problem(response, 400, "malformed-json")


async def test_wrong_content_type(gateway: tuple[Gateway, TestClient]) -> None:
    gw, client = gateway
    with no_upstream_call(gw):
        response = await client.post("/v1/auth/refresh", data={"refresh_token": "abc"})
        await problem(response, 415, "unsupported-media-type")


async def test_unknown_fields_are_rejected(gateway: tuple[Gateway, TestClient]) -> None:
    gw, client = gateway
    with no_upstream_call(gw):
        response = await client.post(
            "/v1/accounts",
            json={
                "email": "x@example.com",
                "password": "long enough password",
                "display_name": "X",
                "roles": ["admin"],
            },
        )
        body = await problem(response, 422, "validation-failed")
    assert body["errors"][0]["location"] == ["body", "roles"]
    assert "long enough password" not in json.dumps(body)


# Made-up scope names, non-ASCII: identity would name each in its refusal (its gRPC
# error message travels percent-encoded in a trailer, 6 bytes for each "é").
MADE_UP_SCOPES = " ".join(f"ééé{i}" for i in range(3000))


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/v1/auth/signin", MADE_UP_SCOPES),
        ("/v1/auth/signin", "profile " * 100),  # well-formed, too long
        ("/v1/auth/signin", "Profile"),
        ("/v1/auth/token", MADE_UP_SCOPES),
        ("/v1/auth/token", "profile\norders:read"),
    ],
)
async def test_a_requested_scope_is_bounded_and_well_formed(
    gateway: tuple[Gateway, TestClient], path: str, scope: str
) -> None:
    gw, client = gateway
    if path == "/v1/auth/signin":
        body = {"email": "x@example.com", "password": "guess", "scope": scope}
    else:
        grant = {"grant_type": "client_credentials", "client_id": "c", "client_secret": "s"}
        body = {**grant, "scope": scope}
    # UTF-8 as typed, not \u-escaped: the made-up scopes fit under the body limit.
    raw = json.dumps(body, ensure_ascii=False).encode()
    assert len(raw) <= gw.settings.gateway_max_body_bytes
    with no_upstream_call(gw):
        response = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        answer = await problem(response, 422, "validation-failed")
    assert answer["errors"][0]["location"] == ["body", "scope"]
    assert "ééé" not in json.dumps(answer, ensure_ascii=False)


async def test_unknown_query_parameters_are_rejected(
    gateway: tuple[Gateway, TestClient], minter: TokenMinter
) -> None:
    gw, client = gateway
    admin = minter.token(scope="identity:admin")
    with no_upstream_call(gw):
        response = await client.get(
            "/v1/admin/api-clients", params={"owner": "me"}, headers=bearer(admin)
        )
        await problem(response, 422, "validation-failed")


async def test_request_timeout_header_is_validated(
    gateway: tuple[Gateway, TestClient], minter: TokenMinter
) -> None:
    gw, client = gateway
    with no_upstream_call(gw):
        response = await client.get(
            "/v1/me", headers={**bearer(minter.token()), "X-Request-Timeout": "soon"}
        )
        await problem(response, 400, "invalid-argument")


# Inside: mTLS --------------------------------------------------------------------------


async def test_grpc_refuses_a_caller_without_a_certificate(
    settings: Settings, identity: ServiceProcess | None
) -> None:
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.pki_dir / "gateway" / "ca.crt")
    )
    context.set_alpn_protocols(["h2"])
    channel = Channel(settings.host, settings.grpc_port("identity"), ssl=context)
    try:
        with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError, ssl.SSLError)):
            await IdentityServiceStub(channel).get_jwks(GetJwksRequest(), timeout=3)
    finally:
        channel.close()


async def test_grpc_serves_the_gateway_certificate(
    settings: Settings, identity: ServiceProcess | None
) -> None:
    from agora.grpc import Channels

    channels = Channels(settings, caller="gateway")
    try:
        reply = await IdentityServiceStub(channels.get("identity")).get_jwks(timeout=3)
        assert reply.keys
    finally:
        channels.close()


# The process ----------------------------------------------------------------------------


def test_python_m_gateway_serves_health_docs_and_metrics(
    settings: Settings, identity: ServiceProcess | None
) -> None:
    log = settings.state_dir / "logs" / "test-gateway.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "AGORA_PROFILE": settings.profile},
            start_new_session=True,
        )
    # Recorded as the stack's gateway: `stack down` stops it if this run is killed.
    stack_component("gateway").adopt(Context(settings), proc.pid, proc.args)
    base = f"http://{settings.host}:{settings.ports['gateway']}"
    side = f"http://{settings.host}:{settings.ports['gateway_side']}"
    try:
        deadline = time.monotonic() + 60  # a cold interpreter on a loaded host, as elsewhere
        while True:
            assert proc.poll() is None, tail(log)
            try:
                with urllib.request.urlopen(f"{side}/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, tail(log)
            time.sleep(0.2)
        for url in (f"{base}/healthz", f"{base}/readyz", f"{side}/healthz"):
            with urllib.request.urlopen(url, timeout=3) as response:
                assert response.status == 200
        with urllib.request.urlopen(f"{base}/docs", timeout=3) as response:
            assert b"/v1/admin/api-clients" in response.read()
        with urllib.request.urlopen(f"{base}/.well-known/jwks.json", timeout=3) as response:
            assert json.loads(response.read())["keys"]
        # A client's own deadline, shorter than the default, that runs out is counted
        # apart from the platform's 5xx (ApiErrorRatioHigh leaves it out).
        rushed = urllib.request.Request(
            f"{base}/v1/auth/signin",
            data=json.dumps({"email": "rushed@example.com", "password": "x"}).encode(),
            headers={"Content-Type": "application/json", "X-Request-Timeout": "1"},
        )
        try:
            urllib.request.urlopen(rushed, timeout=3)
        except urllib.error.HTTPError as refused:
            assert refused.code == 504, refused.read()
        else:
            raise AssertionError("a 1 ms deadline was met")
        # A method the API does not use (of the few dozen aiohttp's parser takes; it
        # refuses any other with a 400 of its own) is counted under "_OTHER".
        brew = urllib.request.Request(f"{base}/v1/products", method="PROPFIND")
        try:
            urllib.request.urlopen(brew, timeout=3)
        except urllib.error.HTTPError as refused:
            assert refused.code in (404, 405), refused.read()
        else:
            raise AssertionError("PROPFIND was answered 2xx")
        with urllib.request.urlopen(f"{side}/metrics", timeout=3) as response:
            scraped = response.read().decode()
        assert "gateway_requests" in scraped
        assert "PROPFIND" not in scraped
        assert any(
            s.name == "gateway_requests_total" and s.labels.get("method") == "_OTHER"
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
        ), scraped
        assert any(
            s.name == "gateway_requests_total"
            and s.labels.get("status") == "504"
            and s.labels.get("deadline") == "client"
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
        ), scraped
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0, tail(log)
