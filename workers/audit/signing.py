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
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agora.config import Settings
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
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise SigningKeyError("AGORA_AUDIT_SIGNING_KEY must be base64") from None
    if len(seed) != SEED_BYTES:
        raise SigningKeyError(f"AGORA_AUDIT_SIGNING_KEY must decode to {SEED_BYTES} bytes")
    return seed


def load_signer(settings: Settings) -> CheckpointSigner:
    """The configured key; locally (dev/test) a generated one kept in the state folder."""
    if settings.audit_signing_key:
        return CheckpointSigner(decode_seed(settings.audit_signing_key))
    if settings.profile == "prod":
        raise SigningKeyError("AGORA_AUDIT_SIGNING_KEY is required in the prod profile")
    path = settings.state_dir / "secrets" / "audit-signing-key"
    _create_once(path)
    return CheckpointSigner(decode_seed(path.read_text()))


def _create_once(path: Path) -> None:
    """Write a new random seed unless one exists (atomic link: concurrent starts agree)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(secrets.token_bytes(SEED_BYTES)).decode() + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
