"""The platform CA issues per-service certificates that verify only against it."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from grpclib.client import Channel

from agora import grpc, pki


def test_pki_is_created_once_and_kept(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ["catalog", "gateway"])
    ca_before = (tmp_path / "ca" / "ca.crt").read_bytes()
    cert_before = (tmp_path / "catalog" / "tls.crt").read_bytes()
    pki.ensure_pki(tmp_path, ["catalog", "gateway", "orders"])
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "catalog" / "tls.crt").read_bytes() == cert_before
    assert (tmp_path / "orders" / "tls.crt").exists()


def test_service_certificate_names_the_service_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ["inventory"])
    cert = x509.load_pem_x509_certificate((tmp_path / "inventory" / "tls.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=inventory"
    cert.verify_directly_issued_by(ca)
    assert (tmp_path / "inventory" / "tls.key").stat().st_mode & 0o077 == 0


def test_server_context_requires_a_client_certificate(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ["payments"])
    context = pki.server_context(tmp_path, "payments")
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


async def _served_serial(server: ssl.SSLContext, client: ssl.SSLContext) -> int:
    """The serial of the certificate a TLS server built on `server` presents now."""

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ["catalog", "orders"])
    server = pki.server_context(tmp_path, "catalog")
    client = pki.client_context(tmp_path, "orders")
    first = await _served_serial(server, client)
    assert pki.reload_changed() == 0, "unchanged files are not reloaded"

    pki.issue(tmp_path / "ca", tmp_path / "catalog", "catalog")  # cert-manager renews in place
    renewed = x509.load_pem_x509_certificate((tmp_path / "catalog" / "tls.crt").read_bytes())
    assert renewed.serial_number != first
    assert pki.reload_changed() == 1
    assert await _served_serial(server, client) == renewed.serial_number


async def test_a_renewal_caught_half_written_keeps_the_old_certificate(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ["search", "gateway"])
    server = pki.server_context(tmp_path, "search")
    client = pki.client_context(tmp_path, "gateway")
    first = await _served_serial(server, client)
    # The new certificate is written, its key not yet: they do not match.
    pki.issue(tmp_path / "ca", tmp_path / "next", "search")
    (tmp_path / "search" / "tls.crt").write_bytes((tmp_path / "next" / "tls.crt").read_bytes())
    assert pki.reload_changed() == 0
    assert await _served_serial(server, client) == first
    (tmp_path / "search" / "tls.key").write_bytes((tmp_path / "next" / "tls.key").read_bytes())
    assert pki.reload_changed() == 1
    assert await _served_serial(server, client) != first


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_a_certificate_expiring_within_a_month_is_reissued(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ["orders"])
    pki.issue(tmp_path / "ca", tmp_path / "orders", "orders", days=10)
    expiring = _serial(tmp_path / "orders" / "tls.crt")
    pki.ensure_pki(tmp_path, ["orders"])
    renewed = x509.load_pem_x509_certificate((tmp_path / "orders" / "tls.crt").read_bytes())
    assert renewed.serial_number != expiring
    assert renewed.not_valid_after_utc - renewed.not_valid_before_utc > pki.RENEW_BEFORE
    pki.server_context(tmp_path, "orders")  # the new key pair matches


def test_a_certificate_from_a_previous_ca_is_reissued(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ["audit"])
    old = _serial(tmp_path / "audit" / "tls.crt")
    (tmp_path / "ca" / "ca.key").unlink()  # the CA is re-created on the next start
    pki.ensure_pki(tmp_path, ["audit"])
    cert = x509.load_pem_x509_certificate((tmp_path / "audit" / "tls.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    assert cert.serial_number != old
    cert.verify_directly_issued_by(ca)
    assert (tmp_path / "audit" / "ca.crt").read_bytes() == (tmp_path / "ca" / "ca.crt").read_bytes()


def test_each_ca_generation_has_a_name_of_its_own(tmp_path: Path) -> None:
    # OpenSSL picks an issuer by name: a process that loaded the old CA beside the
    # new one would verify the new certificates against the old key.
    pki.ensure_pki(tmp_path, ["audit"])
    first = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes()).subject
    (tmp_path / "ca" / "ca.key").unlink()
    pki.ensure_pki(tmp_path, ["audit"])
    second = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes()).subject
    assert first != second
    assert pki.CA_NAME in first.rfc4514_string() and pki.CA_NAME in second.rfc4514_string()


def test_a_key_left_by_an_interrupted_issue_gets_a_matching_certificate(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ["payments"])
    pki.issue(tmp_path / "ca", tmp_path / "next", "payments")
    (tmp_path / "payments" / "tls.key").write_bytes((tmp_path / "next" / "tls.key").read_bytes())
    pki.ensure_pki(tmp_path, ["payments"])
    pki.server_context(tmp_path, "payments")


async def test_the_watcher_renews_an_expiring_certificate_and_serves_it(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, ["catalog", "gateway"])
    pki.issue(tmp_path / "ca", tmp_path / "catalog", "catalog", days=1)
    server = pki.server_context(tmp_path, "catalog")
    client = pki.client_context(tmp_path, "gateway")
    expiring = await _served_serial(server, client)
    watcher = asyncio.create_task(pki.watch_certificates(interval_s=0.01))
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while await _served_serial(server, client) == expiring:
            assert asyncio.get_running_loop().time() < deadline, "never renewed"
            await asyncio.sleep(0.02)
    finally:
        watcher.cancel()
    assert _serial(tmp_path / "catalog" / "tls.crt") != expiring


async def _accepted(server: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    """Whether a TLS server built on `server` completes a handshake with `client`."""
    handshakes: asyncio.Queue[bool] = asyncio.Queue()

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.put_nowait(True)
        writer.close()

    listener = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname="localhost"
            )
            writer.close()
        except (ssl.SSLError, ConnectionError):
            return False
        try:
            return await asyncio.wait_for(handshakes.get(), timeout=1)
        except TimeoutError:
            return False
    finally:
        listener.close()
        await listener.wait_closed()


def _with_old_ca(tmp_path: Path, service: str) -> None:
    """`service`'s CA bundle trusts the old CA of tmp_path/old as well, as during a
    CA rotation before the old CA is dropped."""
    bundle = tmp_path / service / "ca.crt"
    bundle.write_bytes(bundle.read_bytes() + (tmp_path / "old" / "ca" / "ca.crt").read_bytes())


async def test_a_ca_dropped_from_the_bundle_is_no_longer_trusted_by_a_live_server(
    tmp_path: Path,
) -> None:
    # OpenSSL's trust store only adds: loaded again, the live context kept trusting
    # the dropped CA (a compromised key could still call every service) until a restart.
    pki.ensure_pki(tmp_path, ["catalog", "gateway"])
    pki.ensure_pki(tmp_path / "old", ["gateway"])
    _with_old_ca(tmp_path, "catalog")
    server = pki.server_context(tmp_path, "catalog")
    stale = pki.client_context(tmp_path / "old", "gateway")  # its certificate: the old CA's
    stale.check_hostname, stale.verify_mode = False, ssl.CERT_NONE  # it only presents it
    fresh = pki.client_context(tmp_path, "gateway")
    assert await _accepted(server, stale) and await _accepted(server, fresh)

    (tmp_path / "catalog" / "ca.crt").write_bytes((tmp_path / "ca" / "ca.crt").read_bytes())
    assert pki.reload_changed() == 1
    assert not await _accepted(server, stale)
    assert await _accepted(server, fresh)


async def test_a_ca_dropped_from_the_bundle_is_no_longer_trusted_by_a_client(
    tmp_path: Path,
) -> None:
    pki.ensure_pki(tmp_path, ["catalog", "gateway"])
    pki.ensure_pki(tmp_path / "old", ["catalog"])
    _with_old_ca(tmp_path, "gateway")
    client = pki.client_context(tmp_path, "gateway")
    impostor = pki.server_context(tmp_path / "old", "catalog")  # the old CA's certificate
    impostor.verify_mode = ssl.CERT_NONE
    assert await _accepted(impostor, pki.current(client))

    (tmp_path / "gateway" / "ca.crt").write_bytes((tmp_path / "ca" / "ca.crt").read_bytes())
    assert pki.reload_changed() == 1
    assert not await _accepted(impostor, pki.current(client))


async def test_a_channel_connects_with_the_context_built_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki.ensure_pki(tmp_path, ["gateway"])
    live = pki.client_context(tmp_path, "gateway")
    channel = grpc._RenewingChannel("127.0.0.1", 1, ssl=live)
    used: list[ssl.SSLContext | None] = []

    async def connected(self: Channel) -> None:
        used.append(self._ssl)

    monkeypatch.setattr(Channel, "_create_connection", connected)
    await channel._create_connection()
    pki.issue(tmp_path / "ca", tmp_path / "gateway", "gateway")  # renewed in place
    assert pki.reload_changed() == 1
    await channel._create_connection()
    pki.issue(tmp_path / "ca", tmp_path / "gateway", "gateway")  # and again
    assert pki.reload_changed() == 1
    await channel._create_connection()
    assert used[0] is live
    assert used[1] is not live and used[2] not in (live, used[1])
    assert used[2] is pki.current(live)
    channel.close()


def _resumed_after(server: ssl.SSLContext, client: ssl.SSLContext, between: Any) -> bool:
    """Whether `client` resumes, after `between()`, the session of its first connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            raw, _ = listener.accept()
            try:
                with server.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(1)
                    tls.send(b"y")
            except (ssl.SSLError, OSError):
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        # With SNI, as grpclib sends it: the server's callback moves the handshake to
        # the context built from the files as they are now (pki._to_current).
        first = client.wrap_socket(
            socket.create_connection(("127.0.0.1", port)), server_hostname="localhost"
        )
        first.send(b"x")
        first.recv(1)
        session = first.session
        first.close()
        between()
        try:
            again = client.wrap_socket(
                socket.create_connection(("127.0.0.1", port)),
                server_hostname="localhost",
                session=session,
            )
            again.send(b"x")
            answered = again.recv(1) == b"y"
            resumed = again.session_reused
            again.close()
        except (ssl.SSLError, OSError):
            return False
        return answered and resumed
    finally:
        listener.close()
        thread.join(5)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_peer_whose_ca_was_dropped_cannot_resume_its_session(
    tmp_path: Path, version: ssl.TLSVersion
) -> None:
    # A resumed session skips the certificate check: the old CA's peer kept resuming
    # the session it had before the drop, for up to the tickets' two hours.
    pki.ensure_pki(tmp_path, ["catalog"])
    pki.ensure_pki(tmp_path / "old", ["gateway"])
    _with_old_ca(tmp_path, "catalog")
    server = pki.server_context(tmp_path, "catalog")
    stale = pki.client_context(tmp_path / "old", "gateway")
    stale.check_hostname, stale.verify_mode = False, ssl.CERT_NONE
    stale.maximum_version = version

    def drop_the_old_ca() -> None:
        (tmp_path / "catalog" / "ca.crt").write_bytes((tmp_path / "ca" / "ca.crt").read_bytes())
        assert pki.reload_changed() == 1

    assert not _resumed_after(server, stale, drop_the_old_ca)
