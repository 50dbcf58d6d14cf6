"""The Ed25519 key checkpoints are signed with, and the exact statement it signs.

In production the key comes from `AGORA_AUDIT_SIGNING_KEY` (base64 of the
32-byte private seed, a mounted secret); locally, when unset, it is generated
once into `<state>/secrets/audit-signing-key`. The public key is published
(gRPC `GetPublicKey`, gateway `GET /v1/audit/public-key`) so that anyone can
check a checkpoint without trusting the audit database.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agora.config import Settings
from agora.secrets import configured_or_local_key, decode_key
from workers.audit.errors import SigningKeyError

SEED_BYTES = 32
STATEMENT_PREFIX = b"agora-audit-checkpoint/v1\n"


def key_id_of(public_key: bytes) -> str:
    """Names a public key by its digest: the same key always has the same id."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def unix_micros(when: dt.datetime) -> int:
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def statement(log_sequence: int, head_hash: bytes, signed_at: dt.datetime) -> bytes:
    """The bytes a checkpoint signature covers (documented in docs/audit.md)."""
    return STATEMENT_PREFIX + (
        f"{log_sequence}\n{head_hash.hex()}\n{unix_micros(signed_at)}".encode()
    )


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    @property
    def pem(self) -> str:
        key = Ed25519PublicKey.from_public_bytes(self.raw)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """A PEM public key, or the base64 of the raw 32 bytes."""
        text = text.strip()
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise SigningKeyError("not an Ed25519 public key")
            return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        raw = base64.b64decode(text, validate=True)
        if len(raw) != 32:
            raise SigningKeyError("an Ed25519 public key is 32 bytes")
        return cls(raw)


class CheckpointSigner:
    def __init__(self, seed: bytes):
        if len(seed) != SEED_BYTES:
            raise SigningKeyError(f"the signing key seed must be {SEED_BYTES} bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = PublicKey(
            self._key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def sign(self, log_sequence: int, head_hash: bytes, signed_at: dt.datetime) -> bytes:
        return self._key.sign(statement(log_sequence, head_hash, signed_at))


def decode_seed(text: str) -> bytes:
    return decode_key(
        text, size=SEED_BYTES, env_name="AGORA_AUDIT_SIGNING_KEY", error=SigningKeyError
    )


def load_signer(settings: Settings) -> CheckpointSigner:
    """The configured key; locally (dev/test) a generated one kept in the state folder."""
    seed = configured_or_local_key(
        settings,
        settings.audit_signing_key,
        env_name="AGORA_AUDIT_SIGNING_KEY",
        filename="audit-signing-key",
        size=SEED_BYTES,
        error=SigningKeyError,
    )
    return CheckpointSigner(seed)
