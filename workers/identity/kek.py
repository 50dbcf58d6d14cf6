"""The key-encryption key (KEK) and the AES-GCM sealing of identity's secrets at rest.

Signing keys' private parts and API clients' HMAC secrets are stored only
sealed under the KEK. In production the KEK comes from `AGORA_IDENTITY_KEK`
(a mounted secret); locally, when unset, it is generated once into
`<state>/secrets/identity-kek` so a fresh machine works with no set-up.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agora.config import Settings

NONCE_BYTES = 12
KEK_BYTES = 32


class KekError(RuntimeError):
    """The KEK is missing or malformed, or a sealed value does not open under it."""


class SecretBox:
    """AES-256-GCM under one KEK.

    Each sealed value is `nonce || ciphertext+tag`. The associated data binds a
    value to its row (e.g. "api_client:<id>"), so a sealed secret copied into
    another row does not open there.
    """

    def __init__(self, kek: bytes):
        if len(kek) != KEK_BYTES:
            raise KekError(f"the KEK must be {KEK_BYTES} bytes, not {len(kek)}")
        self._aead = AESGCM(kek)
        # Names the KEK without revealing it, so rows record which KEK sealed them
        # (the hook for a later KEK rotation).
        self.kek_id = hashlib.sha256(b"agora-identity-kek:" + kek).hexdigest()[:16]

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, body, context.encode())
        except InvalidTag:
            raise KekError(f"sealed value for {context} does not open under this KEK") from None


def decode_kek(text: str) -> bytes:
    try:
        kek = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise KekError("AGORA_IDENTITY_KEK must be base64") from None
    if len(kek) != KEK_BYTES:
        raise KekError(f"AGORA_IDENTITY_KEK must decode to {KEK_BYTES} bytes, not {len(kek)}")
    return kek


def load_kek(settings: Settings) -> bytes:
    """The configured KEK; locally (dev/test) a generated one kept in the state folder."""
    if settings.identity_kek:
        return decode_kek(settings.identity_kek)
    if settings.profile == "prod":
        raise KekError("AGORA_IDENTITY_KEK is required in the prod profile")
    path = settings.state_dir / "secrets" / "identity-kek"
    _create_once(path)
    return decode_kek(path.read_text())


def _create_once(path: Path) -> None:
    """Write a new random KEK unless one exists.

    Written to a private temporary file and hard-linked into place: the link is
    atomic and fails if another process got there first, so concurrent starts
    agree on one KEK and nobody reads a half-written file.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(secrets.token_bytes(KEK_BYTES)).decode() + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
