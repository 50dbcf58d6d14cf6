"""A body the gateway cannot read is the client's 400, never the gateway's 500.

Anyone can send a corrupt gzip body to /v1/auth/signin, or drop the connection
half-way through a body: as a 500 each would log a stack trace and feed the 5xx
alert. Served as the gateway is (an AppRunner, no handler cancellation), over a
raw socket so the body is exactly the bytes written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from aiohttp import web

from agora import config
from gateway import middleware
from gateway.deps import GATEWAY
from gateway.metrics import GatewayMetrics
from gateway.routes import all_routes
from gateway.routing import RouteTable
from gateway.signatures import SignedHeaders, SigningSecrets, verify_request
from gateway.tokens import Principal

CLIENT = Principal("client-1", "api_client", frozenset(), "j", "s", 2_000_000_000, "k")
SIGNED = SignedHeaders(timestamp="1795650000", nonce="n" * 16, signature="v1=00")
UNREADABLE = "the request body could not be read"


async def signed_write(request: web.Request) -> web.Response:
    """What the admit middleware does for an API client, past its Redis call."""

    async def secret(client_id: str) -> str:
        return "s3cret"

    await verify_request(request, CLIENT, SigningSecrets(secret), SIGNED)
    return web.Response(text="verified")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """The gateway's edge in front of its real routes (sign-in reads its body first)."""
    app = web.Application(middlewares=[middleware.edge])
    app[GATEWAY] = SimpleNamespace(  # type: ignore[assignment,misc]
        settings=config.load({"AGORA_PROFILE": "test"}),
        routes=RouteTable(all_routes()),
        metrics=GatewayMetrics(),
    )
    app[GATEWAY].routes.register(app)
    app.router.add_post("/signed", signed_write)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


def post(
    path: str,
    encoding: str,
    body: bytes,
    length: int | None = None,
    content_type: str = "application/json",
) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        f"Content-Type: {content_type}\r\nContent-Encoding: {encoding}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    return head.encode() + body


async def answer_to(port: int, request: bytes) -> bytes:
    """The whole answer to `request`, sent as raw bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    return answer


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, object]]:
    answer = await answer_to(port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("path", ["/v1/auth/signin", "/signed"])
async def test_a_corrupt_compressed_body_is_a_400_problem(
    port: int, path: str, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    status, problem = await exchange(port, post(path, encoding, b"not compressed"))
    assert (status, problem["type"], problem["detail"]) == (
        400,
        "https://agora.dev/problems/invalid-argument",
        UNREADABLE,
    )
    assert not gateway_errors(caplog)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_corrupt_sign_in_form_of_the_codec_page_is_a_400_page(
    port: int, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    form = "application/x-www-form-urlencoded"
    request = post("/codec/session", encoding, b"not compressed", content_type=form)
    answer = await answer_to(port, request)
    # The sign-in page shows its problem as a page, not problem+json.
    assert answer.split()[1] == b"400"
    assert b"the sign-in form could not be read" in answer
    assert not gateway_errors(caplog)


async def test_a_client_gone_mid_body_is_answered_400_not_500(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/v1/auth/signin", "identity", b'{"email": ', length=1000))
    await writer.drain()
    writer.close()  # the rest of the body never comes
    answered = await access_record(caplog)
    assert answered.status == 400  # type: ignore[attr-defined]
    assert not gateway_errors(caplog)


def gateway_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The gateway's error logs (a stack trace per request). aiohttp's own lingering
    close still logs the broken stream it drains after the answer (aiohttp#1918)."""
    records = caplog.records
    return [r for r in records if r.name.startswith("gateway") and r.levelno >= logging.ERROR]


async def access_record(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """Poll: the handler meets the lost connection after the client has let go."""
    deadline = time.monotonic() + 10
    while not (records := [r for r in caplog.records if r.name == "gateway.access"]):
        assert time.monotonic() < deadline, "the request was never answered"
        await asyncio.sleep(0.01)
    return records[0]
