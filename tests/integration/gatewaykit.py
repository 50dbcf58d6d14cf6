"""Helpers for the gateway's integration tests: an in-process gateway on the test stack.

The gateway runs in the test process (aiohttp TestServer) against the real
identity service, Redis and Temporal, so tests can read its upstream-call tally
to prove that a refused request reached no service. Its key source is identity's
JWKS plus one test-only key, so tests can mint tokens with chosen claims
(expired, wrong audience, ...) that the gateway's production code then checks.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from joserfc import jwt
from joserfc.jwk import OKPKey

from agora import signing
from agora.config import Settings
from agora.grpc import Channels
from contracts.agora.identity.v1 import IdentityServiceStub
from gateway.app import build_app, close_gateway, create_gateway, jwks_from_identity
from gateway.deps import Gateway

PROBLEM = "https://agora.dev/problems/"
PASSWORD = "correct horse battery staple"
# Generous by default so that many sign-ins from 127.0.0.1 in one session pass;
# the rate-limit tests build their own gateway with tight limits.
ROOMY_RATES = {
    "read": "1000/s burst 1000",
    "write": "1000/s burst 1000",
    "auth": "1000/s burst 1000",
    "signin": "1000/s burst 1000",
}


class TokenMinter:
    """An Ed25519 key the in-process gateway trusts (its JWKS source adds it)."""

    def __init__(self, settings: Settings):
        self.kid = f"test-{uuid.uuid4().hex[:12]}"
        self.key = OKPKey.generate_key("Ed25519", parameters={"kid": self.kid})
        self.settings = settings

    def public_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "alg": "EdDSA", "use": "sig"}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": str(uuid.uuid4()),
            "exp": now + 900,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "scope": "profile catalog:read",
            "ptype": "account",
            "sid": str(uuid.uuid4()),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, **overrides: Any) -> str:
        return jwt.encode(
            {"alg": "EdDSA", "kid": self.kid},
            self.claims(**overrides),
            self.key,
            algorithms=["EdDSA"],
        )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value).encode())


@asynccontextmanager
async def running_gateway(
    settings: Settings,
    minter: TokenMinter | None = None,
    *,
    on_gateway_port: bool = False,
    **overrides: Any,
) -> AsyncIterator[tuple[Gateway, TestClient]]:
    """A gateway on an ephemeral port, or on the profile's gateway port (where the
    Temporal UI's links and a browser expect it); `overrides` replace Settings fields."""
    settings = dataclasses.replace(settings, **{"rate_limits": ROOMY_RATES, **overrides})
    channels = Channels(settings, caller="gateway")
    from_identity = jwks_from_identity(IdentityServiceStub(channels.get("identity")))

    async def jwks_fetch() -> list[dict[str, Any]]:
        keys = await from_identity()
        return [*keys, minter.public_jwk()] if minter else keys

    gw = await create_gateway(settings, jwks_fetch=jwks_fetch)
    port = {"host": settings.host, "port": settings.ports["gateway"]} if on_gateway_port else {}
    client = TestClient(TestServer(build_app(gw), **port))
    await client.start_server()
    # A service reports ready a moment before its gRPC port listens: wait for the keys.
    deadline = time.monotonic() + 60
    while not gw.jwks.loaded and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        await gw.jwks.refresh(force=True)
    assert gw.jwks.loaded, "identity's signing keys not loaded in 60 s (is identity up?)"
    try:
        yield gw, client
    finally:
        await client.close()
        await close_gateway(gw)
        channels.close()


@contextmanager
def no_upstream_call(gw: Gateway) -> Iterator[None]:
    """Asserts that the block made no call to a service or Temporal for a request."""
    before = sum(gw.upstream.calls.values())
    yield
    assert sum(gw.upstream.calls.values()) == before, gw.upstream.calls


async def problem(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Assert a problem+json answer with this status and type; returns the body."""
    body = await response.text()
    assert response.status == status, body
    assert response.content_type == "application/problem+json", body
    document = json.loads(body)
    assert document["type"] == PROBLEM + code, document
    assert document["status"] == status
    for field in ("title", "detail", "instance", "trace_id"):
        assert document[field], document
    assert "Traceback" not in body
    return document


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Api:
    """A client of the public API, as an SDK would be."""

    def __init__(self, client: TestClient):
        self.client = client

    async def register(self, email: str | None = None) -> dict[str, Any]:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        response = await self.client.post(
            "/v1/accounts", json={"email": email, "password": PASSWORD, "display_name": "Test"}
        )
        assert response.status == 201, await response.text()
        return {**await response.json(), "email": email}

    async def sign_in(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/auth/signin", json={"email": email, "password": password}
        )
        assert response.status == 200, await response.text()
        return await response.json()

    async def new_session(self) -> dict[str, Any]:
        account = await self.register()
        return {**await self.sign_in(account["email"]), "account": account}

    async def signed(
        self,
        method: str,
        path: str,
        token: str,
        secret: str,
        *,
        body: bytes = b"",
        query: dict[str, str] | None = None,
        **sign_options: Any,
    ) -> ClientResponse:
        headers = {
            **bearer(token),
            **signing.sign_headers(
                secret, method, path, list((query or {}).items()), body, **sign_options
            ),
        }
        if body:
            headers["Content-Type"] = "application/json"
        return await self.client.request(method, path, headers=headers, data=body, params=query)


async def register_admin(gw: Gateway, email: str | None = None) -> str:
    """An admin account, registered as an operator would: the workflow with roles=["admin"].

    The public API only registers customers; tests act as the operator here.
    """
    from workflows.identity import (
        TASK_QUEUE,
        RegisterAccountInput,
        RegisterAccountWorkflow,
        register_workflow_id,
    )

    email = email or f"admin-{uuid.uuid4().hex[:10]}@example.com"
    password_hash = await gw.passwords.hash(PASSWORD)
    await gw.upstream.temporal.execute_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(
            account_id=str(uuid.uuid4()),
            email=email,
            display_name="Admin",
            password_hash=password_hash,
            roles=["admin"],
        ),
        id=register_workflow_id(email),
        task_queue=TASK_QUEUE,
    )
    return email
