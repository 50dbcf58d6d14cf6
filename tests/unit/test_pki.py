"""The platform CA issues per-service certificates that verify only against it."""

from __future__ import annotations

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
