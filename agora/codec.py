"""Payload encryption for Temporal: AES-256-GCM, key id in the payload's metadata.

Every client and worker of the platform uses this codec (agora.temporal.connect),
so workflow inputs, results and activity arguments (customer PII, addresses,
payment references) are stored encrypted in Temporal's history. The Temporal web
UI shows them in clear through the codec server (gateway/codec.py), for staff
with the right role.

Keys live in a JSON key ring: {"active": "<key id>", "keys": {"<key id>": "<base64 32 bytes>"}}
(`AGORA_CODEC_KEYS_FILE`; locally generated into <state>/secrets/codec-keys.json,
a Kubernetes Secret in deployment). The active key encrypts; every key of the ring
decrypts, so old keys stay to read history written under them. Locally, where every
process restarts at once:

    python -m agora.codec rotate     # then restart the workers and the gateway

In a rolling deployment old and new processes run side by side, and a process must
never write under a key another cannot read yet. So in two rounds of restarts
(docs/deploy.md, "Rotating the codec key"):

    python -m agora.codec add        # a new key, decrypt-only; restart everything
    python -m agora.codec activate <key id>   # it encrypts from now; restart again
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from agora.config import Settings
from agora.secrets import write_private

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class UnknownKey(ValueError):
    """A payload was encrypted under a key this process does not have."""


class Unencrypted(ValueError):
    """A payload not encrypted by the platform's codec, refused by its clients and workers."""


@dataclass(frozen=True)
class KeyRing:
    active: str
    keys: dict[str, bytes]

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        raw = json.loads(path.read_text())
        keys = {kid: base64.b64decode(value) for kid, value in raw["keys"].items()}
        if raw["active"] not in keys or any(len(k) != 32 for k in keys.values()):
            raise ValueError(f"{path}: the active key must exist and every key must be 32 bytes")
        return cls(raw["active"], keys)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "active": self.active,
            "keys": {kid: base64.b64encode(k).decode() for kid, k in self.keys.items()},
        }
        write_private(path, json.dumps(body, indent=2).encode())

    def with_new_key(self) -> tuple[KeyRing, str]:
        """This ring plus a new key that decrypts but does not encrypt (yet)."""
        kid = f"k{len(self.keys) + 1}-{secrets.token_hex(3)}"
        return KeyRing(self.active, {**self.keys, kid: AESGCM.generate_key(bit_length=256)}), kid

    def activated(self, kid: str) -> KeyRing:
        """This ring encrypting with `kid`, a key it already holds."""
        if kid not in self.keys:
            raise KeyError(f"no key {kid!r} in the ring (keys: {', '.join(self.keys)})")
        return KeyRing(kid, self.keys)

    def rotated(self) -> KeyRing:
        """A new key, active at once: only where every process restarts together."""
        ring, kid = self.with_new_key()
        return ring.activated(kid)


def keys_file(settings: Settings) -> Path:
    return Path(settings.codec_keys_file or settings.state_dir / "secrets" / "codec-keys.json")


def load_or_create(settings: Settings) -> KeyRing:
    """The key ring; locally (not in prod) a first one is generated when none exists."""
    path = keys_file(settings)
    if path.exists():
        return KeyRing.load(path)
    if settings.profile == "prod":
        raise FileNotFoundError(f"codec key ring {path} is missing (AGORA_CODEC_KEYS_FILE)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several processes start at once; the first to take the lock writes the ring.
    with (path.parent / ".codec-keys.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            KeyRing("k1", {"k1": AESGCM.generate_key(bit_length=256)}).save(path)
    return KeyRing.load(path)


class EncryptionCodec(PayloadCodec):
    """Encrypts every payload with the active key; decrypts with the key named in it.

    A payload that is not encrypted is refused (Unencrypted), not passed through:
    the encryption is also what proves a payload came from a holder of the key ring.
    Passed through, anyone who could start a workflow in Temporal (the CLI, the web
    UI) gave the workers any input in clear, e.g. a RegisterAccount with the admin
    role. An operator's start or signal goes through the codec server's encode
    (`--codec-endpoint`, an admin's token; docs/temporal-ui.md).
    """

    def __init__(self, ring: KeyRing):
        self._ring = ring
        self._ciphers = {kid: AESGCM(key) for kid, key in ring.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        kid = self._ring.active
        cipher = self._ciphers[kid]
        out = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), kid.encode())
            out.append(
                Payload(metadata={"encoding": ENCODING, KEY_ID: kid.encode()}, data=nonce + sealed)
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                raise Unencrypted(
                    "payload is not encrypted by the platform's codec: refused"
                    " (start or signal through the codec server's encode)"
                )
            kid = payload.metadata.get(KEY_ID, b"").decode()
            cipher = self._ciphers.get(kid)
            if cipher is None:
                raise UnknownKey(f"payload encrypted under unknown key {kid!r}")
            nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
            out.append(Payload.FromString(cipher.decrypt(nonce, sealed, kid.encode())))
        return out


def main(argv: list[str] | None = None) -> int:
    from agora import config

    args = sys.argv[1:] if argv is None else argv
    settings = config.load()
    path = keys_file(settings)
    if args == ["rotate"]:
        ring = load_or_create(settings).rotated()
        ring.save(path)
        print(f"active key is now {ring.active}; {len(ring.keys)} keys in {path}")
        print("restart the workers and the gateway (make stop && make run) to encrypt with it")
        return 0
    if args == ["add"]:
        ring, kid = load_or_create(settings).with_new_key()
        ring.save(path)
        print(f"added key {kid}, decrypt-only; {ring.active} still encrypts ({path})")
        print(f"roll it out to every process, then: python -m agora.codec activate {kid}")
        return 0
    if len(args) == 2 and args[0] == "activate":
        try:
            ring = load_or_create(settings).activated(args[1])
        except KeyError as missing:
            print(missing.args[0], file=sys.stderr)
            return 1
        ring.save(path)
        print(f"active key is now {ring.active} ({path}); roll it out to every process")
        return 0
    if args == ["show"]:
        ring = load_or_create(settings)
        print(f"{path}: active {ring.active}, keys {', '.join(ring.keys)}")
        return 0
    print("usage: python -m agora.codec rotate|add|activate <key id>|show", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
