"""The key-encryption key (KEK) and the AES-GCM sealing of identity's secrets at rest.

Signing keys' private parts and API clients' HMAC secrets are stored only
sealed under the KEK. In production the KEK comes from `AGORA_IDENTITY_KEK`
(a mounted secret); locally, when unset, it is generated once into
`<state>/secrets/identity-kek` so a fresh machine works with no set-up.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agora.config import Settings
from agora.secrets import configured_or_local_key, decode_key

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
    return decode_key(text, size=KEK_BYTES, env_name="AGORA_IDENTITY_KEK", error=KekError)


def load_kek(settings: Settings) -> bytes:
    """The configured KEK; locally (dev/test) a generated one kept in the state folder."""
    return configured_or_local_key(
        settings,
        settings.identity_kek,
        env_name="AGORA_IDENTITY_KEK",
        filename="identity-kek",
        size=KEK_BYTES,
        error=KekError,
    )
