"""Security and bad input at every service's internal gRPC port, for all seven services.

* mTLS: a peer without a certificate, or with one from another CA, is refused in the
  TLS handshake (1.2) or right after it (1.3), before any HTTP/2 byte.
* Bad frames: a malformed protobuf, a gRPC length prefix longer than its data, a
  truncated prefix and an invalid compressed flag, sent over HTTP/2 with a valid
  platform certificate, each get a gRPC error status; the process stays ready and
  keeps answering well-formed calls.
* Stores: each service's database role cannot open any other service's database.
  (The audit log's refusal of UPDATE / DELETE / TRUNCATE, even for its owner and a
  superuser, is proven in tests/integration/test_audit.py.)
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.request
from pathlib import Path

import asyncpg
import pytest
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from agora import pki
from agora.config import SERVICES, Settings
from agora.grpc import CALLERS
from tests.integration.conftest import Services
from tests.integration.grpcraw import Answer, call_raw, grpc_frame

pytestmark = pytest.mark.integration

# One unary method per service whose request has fields, so garbage cannot parse as it.
METHODS = {
    "identity": "/agora.identity.v1.IdentityService/GetAccount",
    "catalog": "/agora.catalog.v1.CatalogService/GetProduct",
    "search": "/agora.search.v1.SearchService/Search",
    "inventory": "/agora.inventory.v1.InventoryService/GetStock",
    "orders": "/agora.orders.v1.OrdersService/GetOrder",
    "payments": "/agora.payments.v1.PaymentsService/GetPayment",
    "audit": "/agora.audit.v1.AuditService/QueryEvents",
}
GRPC_OK = 0
INVALID_ARGUMENT = 3

# name -> the DATA of one request stream. None of these is a well-formed gRPC message,
# and each must be answered with a gRPC error status. All are well-formed HTTP/2 (the
# stream ends cleanly), so none is HTTP/2's to refuse: a RST_STREAM or GOAWAY, whatever
# its code (INTERNAL_ERROR is a handler or connection that failed), is a failure.
BAD_BODIES = {
    # A varint that never ends (the stream runs out inside it).
    "unterminated-varint": grpc_frame(b"\x08\xff\xff"),
    # A varint of eleven bytes (at most ten encode 64 bits).
    "overlong-varint": grpc_frame(b"\xff" * 11),
    # The prefix declares 1 MiB; 3 bytes follow, then the stream ends.
    "length-prefix-longer-than-data": grpc_frame(b"abc", declared_length=1 << 20),
    # The stream ends inside the 5-byte prefix.
    "truncated-prefix": b"\x00\x00\x00",
    # Compressed flag set although no grpc-encoding was negotiated.
    "compressed-without-encoding": grpc_frame(b"\x1f\x8b\x08\x00garbage", compressed=1),
    # A compressed flag that is neither 0 nor 1.
    "invalid-compressed-flag": grpc_frame(b"\x0a\x01x", compressed=7),
}
# Those whose gRPC framing is whole but whose protobuf does not parse.
UNPARSABLE = ("unterminated-varint", "overlong-varint")
# Malformed protobuf that betterproto2 parses leniently instead of refusing: a field
# whose declared length runs past the end of the message is cut short, and wire type 7
# is skipped; grpclib answers a unary call after its first message and ignores any
# second one. The service must still answer a complete gRPC status (an error, or an
# answer to the request as parsed), never hang or die (see docs/testing.md).
LENIENT_BODIES = {
    "field-longer-than-message": grpc_frame(b"\x0a\x80\x80\x80\x80\x01abc"),
    "invalid-wire-type": grpc_frame(b"\x0f\xff\xff"),
    "two-messages-on-a-unary-call": grpc_frame(b"") + grpc_frame(b""),
}


@pytest.fixture(scope="module")
def every_service(services: Services) -> Services:
    for service in SERVICES:
        services(service)
    return services


def platform_context(settings: Settings) -> ssl.SSLContext:
    return pki.client_context(settings.pki_dir, "gateway")


async def health(settings: Settings, service: str, context: ssl.SSLContext) -> int:
    channel = Channel(settings.host, settings.grpc_port(service), ssl=context)
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
        return int(reply.status)
    finally:
        channel.close()


def ready(settings: Settings, service: str) -> bool:
    url = f"http://{settings.host}:{settings.side_port(service)}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


# mTLS -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
async def test_a_platform_certificate_is_served(
    settings: Settings, every_service: Services, service: str
) -> None:
    assert await health(settings, service, platform_context(settings)) == (
        HealthCheckResponse.SERVING
    )


def peer_without_certificate(settings: Settings) -> ssl.SSLContext:
    """Trusts the platform CA, shows no certificate of its own."""
    context = ssl.create_default_context(cafile=str(settings.pki_dir / "ca" / "ca.crt"))
    context.set_alpn_protocols(["h2"])
    return context


def peer_with_rogue_certificate(settings: Settings, folder: Path) -> ssl.SSLContext:
    """A rogue CA issuing a certificate with the gateway's name: the name is not enough."""
    pki.create_ca(folder / "ca", "Rogue CA")
    pki.issue(folder / "ca", folder / "gateway", "gateway")
    context = peer_without_certificate(settings)
    context.load_cert_chain(
        str(folder / "gateway" / "tls.crt"), str(folder / "gateway" / "tls.key")
    )
    return context


def first_bytes(settings: Settings, service: str, context: ssl.SSLContext) -> bytes:
    """Connect, do the client's side of the TLS handshake and read what the service sends
    first. A service that accepts the peer speaks first: HTTP/2's server preface, a
    SETTINGS frame. (A time-out raises TimeoutError, which no refusal test accepts.)"""
    with socket.create_connection((settings.host, settings.grpc_port(service)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=settings.host) as tls:
            return tls.recv(64)


def refused_in_tls13(settings: Settings, service: str, context: ssl.SSLContext) -> None:
    """In TLS 1.3 the client's handshake completes before the server has checked the
    client's certificate: the server then closes the connection, before any HTTP/2
    byte. (The asyncio server closes without sending its alert, so there is no alert to
    name: the refusal is the close.)"""
    assert first_bytes(settings, service, context) == b""


def refused_in_tls12_handshake(
    settings: Settings, service: str, context: ssl.SSLContext
) -> ssl.SSLError | ConnectionResetError:
    """In TLS 1.2 the server checks the client's certificate before its Finished: the
    handshake itself fails, the server dropping it (an EOF inside the handshake, or a
    reset when the client's flight was not read to its end)."""
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLEOFError, ConnectionResetError)) as refused:
        first_bytes(settings, service, context)
    return refused.value


@pytest.mark.parametrize("service", SERVICES)
def test_the_probe_gets_http2_from_a_platform_certificate(
    settings: Settings, every_service: Services, service: str
) -> None:
    # The control for the refusals below: the same probe with the platform's certificate
    # is answered with HTTP/2's SETTINGS frame (type 0x4 at byte 3), in both versions.
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        context = platform_context(settings)
        context.maximum_version = version
        answer = first_bytes(settings, service, context)
        assert len(answer) >= 9 and answer[3] == 0x4, (version, answer)


@pytest.mark.parametrize("service", SERVICES)
def test_a_peer_without_a_certificate_is_refused(
    settings: Settings, every_service: Services, service: str
) -> None:
    refused_in_tls13(settings, service, peer_without_certificate(settings))
    refused = refused_in_tls12_handshake(settings, service, peer_without_certificate(settings))
    if isinstance(refused, ssl.SSLEOFError):
        assert refused.reason == "UNEXPECTED_EOF_WHILE_READING", refused


@pytest.mark.parametrize("service", SERVICES)
def test_a_certificate_from_another_ca_is_refused(
    settings: Settings, every_service: Services, service: str, tmp_path: Path
) -> None:
    refused_in_tls13(settings, service, peer_with_rogue_certificate(settings, tmp_path / "1.3"))
    refused = refused_in_tls12_handshake(
        settings, service, peer_with_rogue_certificate(settings, tmp_path / "1.2")
    )
    if isinstance(refused, ssl.SSLEOFError):
        assert refused.reason == "UNEXPECTED_EOF_WHILE_READING", refused


# Bad frames ---------------------------------------------------------------------------


def grpc_error_missing(answer: Answer, case: str) -> str | None:
    """Why `answer` is not a complete gRPC error status, or None when it is one."""
    complete = answer.ended and answer.headers.get(":status") == "200"
    if complete and answer.grpc_status not in (None, GRPC_OK):
        if "Traceback" in answer.grpc_message:
            return f"{case}: a traceback in grpc-message: {answer.grpc_message[:300]}"
        return None
    refusal = answer.refused_by_http2
    if refusal is not None:
        return f"{case}: HTTP/2 {refusal[0]} with error code {refusal[1]}, no gRPC status"
    return f"{case}: no gRPC error status: {answer}"


@pytest.mark.parametrize("service", SERVICES)
async def test_malformed_frames_get_grpc_errors_and_the_service_keeps_serving(
    settings: Settings, every_service: Services, service: str
) -> None:
    context = platform_context(settings)
    problems = []
    for case, body in BAD_BODIES.items():
        answer = await asyncio.to_thread(
            call_raw, settings.host, settings.grpc_port(service), context, METHODS[service], body
        )
        problems.append(grpc_error_missing(answer, case))
    assert not any(problems), [p for p in problems if p]
    # A frame that arrives whole but does not parse is the caller's bad input.
    for case in UNPARSABLE:
        answer = await asyncio.to_thread(
            call_raw,
            settings.host,
            settings.grpc_port(service),
            context,
            METHODS[service],
            BAD_BODIES[case],
        )
        assert answer.grpc_status == INVALID_ARGUMENT, (case, answer)
    for case, body in LENIENT_BODIES.items():
        answer = await asyncio.to_thread(
            call_raw, settings.host, settings.grpc_port(service), context, METHODS[service], body
        )
        assert answer.ended and answer.grpc_status is not None, (case, answer)
    # An unknown method and an unknown content type are refused the same way.
    unknown = await asyncio.to_thread(
        call_raw,
        settings.host,
        settings.grpc_port(service),
        context,
        "/agora.nothing.v1.Nothing/Nothing",
        grpc_frame(b""),
    )
    assert unknown.grpc_status == 12, unknown  # UNIMPLEMENTED
    # The process survived every case and still answers correct calls.
    assert every_service.running[service].proc.poll() is None, f"{service} died"
    assert ready(settings, service)
    assert await health(settings, service, context) == HealthCheckResponse.SERVING


# Stores ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", SERVICES)
async def test_a_service_role_opens_only_its_own_database(
    settings: Settings, every_service: Services, role: str
) -> None:
    own = settings.db_dsn(role)
    conn = await asyncpg.connect(own)
    try:
        assert await conn.fetchval("SELECT current_database()") == role
    finally:
        await conn.close()
    base = own.rsplit("/", 1)[0]
    # Also the maintenance database; template1 keeps PostgreSQL's default PUBLIC CONNECT.
    for other in (*(s for s in SERVICES if s != role), "postgres"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await asyncpg.connect(f"{base}/{other}")


# Callers --------------------------------------------------------------------------

PERMISSION_DENIED = 7


@pytest.mark.parametrize("service", SERVICES)
async def test_a_platform_peer_that_is_not_a_caller_of_the_service_is_refused(
    settings: Settings, every_service: Services, service: str
) -> None:
    # Every service's certificate is the platform CA's: any of them could call
    # identity's SignIn past the gateway's rate limits, or sign a session out by its id.
    # Only the service's callers (agora.grpc.CALLERS) get past the wrapper; an empty
    # request (a well-formed message) gets an answer or the service's own refusal.
    callers = CALLERS[service]

    async def status_as(peer: str) -> int | None:
        answer = await asyncio.to_thread(
            call_raw,
            settings.host,
            settings.grpc_port(service),
            pki.client_context(settings.pki_dir, peer),
            METHODS[service],
            grpc_frame(b""),
        )
        return answer.grpc_status

    for peer in sorted(set(SERVICES) - callers - {service}):
        assert await status_as(peer) == PERMISSION_DENIED, peer
    for caller in sorted(callers):
        assert await status_as(caller) not in (None, PERMISSION_DENIED), caller
