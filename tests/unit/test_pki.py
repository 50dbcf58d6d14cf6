"""The platform CA issues per-service certificates that verify only against it."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from cryptography import x509

from agora import pki


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
