"""The Ed25519 key checkpoints are signed with, and the exact statement it signs.

In production the key comes from `AGORA_AUDIT_SIGNING_KEY` (base64 of the
32-byte private seed, a mounted secret); locally, when unset, it is generated
once into `<state>/secrets/audit-signing-key`. The public key is published
(gRPC `GetPublicKey`, gateway `GET /v1/audit/public-key`) so that anyone can
check a checkpoint without trusting the audit database.

After a key rotation the replaced keys' public halves stay trusted for the
checkpoints they signed (`TrustedKeys`): a verification under the new key goes
on from the last checkpoint an old key signed, since the log's first rows may be
detached by then. They are read from AGORA_AUDIT_RETIRED_PUBLIC_KEYS or, when it
is empty, `<state>/secrets/audit-retired-public-keys` (PEM or base64 of the raw 32
bytes; one per line, or commas between them in the variable; `#` starts a comment).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agora.config import Settings
from agora.secrets import configured_or_local_key, decode_key
from workers.audit.errors import SigningKeyError

SEED_BYTES = 32
STATEMENT_PREFIX = b"agora-audit-checkpoint/v1\n"
# In <state>/secrets/: the public keys of signing keys that were rotated out.
RETIRED_KEYS_FILE = "audit-retired-public-keys"


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


@dataclass(frozen=True)
class TrustedKeys:
    """The keys whose checkpoints a verification trusts: the current signing key's
    and the retired ones it replaced (public halves only, never used to sign)."""

    current: PublicKey
    retired: tuple[PublicKey, ...] = ()

    @classmethod
    def of(cls, keys: PublicKey | TrustedKeys) -> TrustedKeys:
        return keys if isinstance(keys, TrustedKeys) else cls(keys)

    def __iter__(self) -> Iterator[PublicKey]:
        yield self.current
        yield from self.retired

    @property
    def key_ids(self) -> list[str]:
        return [key.key_id for key in self]

    def get(self, key_id: str) -> PublicKey | None:
        return next((key for key in self if key.key_id == key_id), None)


def parse_public_keys(text: str) -> tuple[PublicKey, ...]:
    """Public keys, one per line (base64 of the raw bytes) or as PEM blocks; `#` comments."""
    keys: list[PublicKey] = []
    pem: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if pem or line.startswith("-----BEGIN"):
            pem.append(line)
            if line.startswith("-----END"):
                keys.append(PublicKey.parse("\n".join(pem)))
                pem = []
            continue
        keys.append(PublicKey.parse(line))
    if pem:
        raise SigningKeyError("a PEM public key is not terminated (no -----END line)")
    return tuple(keys)


def load_trusted_keys(settings: Settings, signer: CheckpointSigner) -> TrustedKeys:
    """The signer's public key and the retired ones: AGORA_AUDIT_RETIRED_PUBLIC_KEYS
    (commas or newlines between keys; what a Kubernetes deployment sets) or else the
    file in the state folder (none when neither is there)."""
    source = "AGORA_AUDIT_RETIRED_PUBLIC_KEYS"
    text = settings.audit_retired_public_keys.replace(",", "\n")
    if not text.strip():
        path = settings.state_dir / "secrets" / RETIRED_KEYS_FILE
        source = str(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return TrustedKeys(signer.public_key)
    try:
        retired = parse_public_keys(text)
    except (SigningKeyError, ValueError) as error:
        raise SigningKeyError(f"{source}: {error}") from None
    current = signer.public_key
    return TrustedKeys(current, tuple(k for k in dict.fromkeys(retired) if k != current))
