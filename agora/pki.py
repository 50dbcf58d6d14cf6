"""The local platform CA and one certificate per service, generated on first start.

In Kubernetes cert-manager issues the same files (ca.crt, tls.crt, tls.key) into
each pod and renews them in place; `watch_certificates` builds new TLS contexts from
renewed files, which new connections use (`current`), so they present the new
certificate and trust only the CAs of the new bundle without a restart (open
connections keep theirs: a peer checks a certificate only at the handshake).
Locally they live under <state>/pki/<service>/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import ipaddress
import logging
import ssl
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agora.secrets import write_private

CA_NAME = "Agora platform CA"
RELOAD_CHECK_S = 60.0
# Renewed this long before expiry, as cert-manager does (its default is a third of
# the lifetime; a month leaves time for a process to pick the new files up).
RENEW_BEFORE = dt.timedelta(days=30)

log = logging.getLogger(__name__)
# Every live context, with its files and the context last built from them (_Files).
_loaded: weakref.WeakKeyDictionary[ssl.SSLContext, _Files] = weakref.WeakKeyDictionary()
# The folders this process keeps issued (locally, where no cert-manager renews them).
_ensured: dict[Path, tuple[str, ...]] = {}


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Several processes may start at once; only one generates."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(path, pem)


def create_ca(directory: Path, common_name: str = CA_NAME) -> None:
    """A self-signed CA in directory/ca.crt + ca.key (used by tests to make a foreign CA too)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(directory / "ca.key", key)
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue(ca_dir: Path, out_dir: Path, name: str, days: int = 365) -> None:
    """A certificate for `name` (server and client use) signed by the CA in ca_dir."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(name),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_key(out_dir / "tls.key", key)
    (out_dir / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out_dir / "ca.crt").write_bytes((ca_dir / "ca.crt").read_bytes())


def ensure_pki(pki_dir: Path, names: list[str] | tuple[str, ...]) -> None:
    """Create the CA and (re-)issue each certificate that is missing, expiring or stale.

    Idempotent and process-safe. A certificate is stale when the current CA did not
    sign it (the CA was re-created). `watch_certificates` then runs this again now and
    then, and loads what it replaced into the live contexts.
    """
    with _locked(pki_dir):
        ca_dir = pki_dir / "ca"
        if _needs_new_ca(ca_dir):
            # A name of its own per generation: OpenSSL picks an issuer by name, and a
            # process that loaded the old CA beside the new one would pick the old.
            create_ca(ca_dir, f"{CA_NAME} {dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S.%f}")
        ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
        for name in names:
            if _needs_issue(ca_cert, pki_dir / name):
                issue(ca_dir, pki_dir / name, name)
    _ensured[pki_dir] = tuple(names)


def _expiring(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE


def _needs_new_ca(ca_dir: Path) -> bool:
    """Missing, expiring, or its key not the certificate's (a create_ca cut short
    between the two files: every certificate it issued would fail to verify)."""
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return True
    return key.public_key() != cert.public_key() or _expiring(cert)


def _needs_issue(ca_cert: x509.Certificate, own: Path) -> bool:
    """Missing, expiring, not signed by ca_cert, or not matching its key (an interrupted issue)."""
    try:
        cert = x509.load_pem_x509_certificate((own / "tls.crt").read_bytes())
        trusted = x509.load_pem_x509_certificate((own / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((own / "tls.key").read_bytes(), None)
        cert.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return True
    return trusted != ca_cert or key.public_key() != cert.public_key() or _expiring(cert)


def server_context(pki_dir: Path, name: str) -> ssl.SSLContext:
    """TLS for a gRPC server that requires a client certificate from the platform CA.

    Its handshakes use the context built from the files as they are now (`current`,
    swapped in by its SNI callback, which OpenSSL runs for every ClientHello, with a
    server name or without)."""
    context = _live(ssl.Purpose.CLIENT_AUTH, pki_dir / name)
    context.sni_callback = _to_current
    return context


def client_context(pki_dir: Path, name: str) -> ssl.SSLContext:
    """TLS for a gRPC client presenting its own certificate and trusting only the platform
    CA. A connection made later should use `current(context)` (agora.grpc's channels do)."""
    return _live(ssl.Purpose.SERVER_AUTH, pki_dir / name)


@dataclass
class _Files:
    """Where a live context's files are, their digest when last built, and the context
    built from them then (None: the live context itself)."""

    own: Path
    purpose: ssl.Purpose
    digest: bytes
    built: ssl.SSLContext | None = None


def _live(purpose: ssl.Purpose, own: Path) -> ssl.SSLContext:
    digest = _digest(own)
    context = _build(purpose, own)
    _loaded[context] = _Files(own, purpose, digest)
    return context


def _build(purpose: ssl.Purpose, own: Path) -> ssl.SSLContext:
    """A context from the files as they are; raises (ssl.SSLError) on a key pair that
    does not match, as a renewal caught half-written has."""
    context = ssl.create_default_context(purpose, cafile=str(own / "ca.crt"))
    if purpose is ssl.Purpose.CLIENT_AUTH:
        context.verify_mode = ssl.CERT_REQUIRED
        # No resumed sessions: a resumption skips the certificate check, so a peer
        # whose CA was dropped from the bundle could go on resuming the session it had
        # (for up to the tickets' 2 hours). A full handshake per connection is cheap:
        # clients connect once a minute (agora.grpc.MAX_CONNECTION_AGE_S).
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(own / "tls.crt"), str(own / "tls.key"))
    context.set_alpn_protocols(["h2"])
    return context


def current(context: ssl.SSLContext) -> ssl.SSLContext:
    """The context built from `context`'s files as they were at the last check: a new
    one once they changed. Never the live context loaded again: OpenSSL's trust store
    only adds, so a CA dropped from the bundle (a rotation, a compromised key) would
    stay trusted until the process restarted."""
    files = _loaded.get(context)
    return files.built if files is not None and files.built is not None else context


def _to_current(
    connection: ssl.SSLObject, _server_name: str | None, context: ssl.SSLContext
) -> None:
    fresh = current(context)
    if fresh is not context:
        connection.context = fresh


def _digest(own: Path) -> bytes:
    files = ("ca.crt", "tls.crt", "tls.key")
    return hashlib.sha256(b"\0".join((own / name).read_bytes() for name in files)).digest()


def reload_changed() -> int:
    """Build a new context for every live one whose files changed; returns how many.

    A renewal caught half-written (a certificate that does not match the key yet)
    leaves the context as it was, to be tried again at the next check.
    """
    reloaded = 0
    for files in list(_loaded.values()):
        try:
            digest = _digest(files.own)
            if digest == files.digest:
                continue
            built = _build(files.purpose, files.own)
        except (OSError, ssl.SSLError) as error:
            log.warning(
                "certificate reload failed", extra={"dir": str(files.own), "error": str(error)}
            )
            continue
        files.built, files.digest = built, digest
        reloaded += 1
        log.info("certificate reloaded", extra={"dir": str(files.own)})
    return reloaded


async def watch_certificates(interval_s: float = RELOAD_CHECK_S) -> None:
    """Check for renewed certificates every `interval_s` (cert-manager renews in place).

    Locally, where this process issued them with `ensure_pki`, it also renews them:
    a stack left running for a year would otherwise outlive its certificates.
    """
    while True:
        await asyncio.sleep(interval_s)
        renew_ensured()
        reload_changed()


def renew_ensured() -> None:
    """Run `ensure_pki` again for every folder this process ensured."""
    for pki_dir, names in list(_ensured.items()):
        try:
            ensure_pki(pki_dir, names)
        except (OSError, ValueError) as error:
            log.warning(
                "certificate renewal failed", extra={"dir": str(pki_dir), "error": str(error)}
            )
