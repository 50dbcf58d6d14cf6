"""Temporal payloads are encrypted with the active key and decrypt under any known key."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter

from agora import codec, config
from agora.codec import NONCE_BYTES, EncryptionCodec, KeyRing, UnknownKey


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


async def test_payloads_are_encrypted_and_round_trip() -> None:
    ring = KeyRing("k1", {"k1": b"\x01" * 32})
    sealed = await EncryptionCodec(ring).encode([plain('{"email":"ann@example.com"}')])
    assert sealed[0].metadata["encoding"] == codec.ENCODING
    assert sealed[0].metadata[codec.KEY_ID] == b"k1"
    assert b"ann@example.com" not in sealed[0].SerializeToString()
    opened = await EncryptionCodec(ring).decode(sealed)
    assert opened[0].data == b'{"email":"ann@example.com"}'


async def test_after_rotation_old_payloads_still_decrypt_and_new_ones_use_the_new_key() -> None:
    old = KeyRing("k1", {"k1": b"\x01" * 32})
    sealed_old = await EncryptionCodec(old).encode([plain("before")])
    new = old.rotated()
    assert new.active != "k1" and "k1" in new.keys
    sealed_new = await EncryptionCodec(new).encode([plain("after")])
    assert sealed_new[0].metadata[codec.KEY_ID] == new.active.encode()
    opened = await EncryptionCodec(new).decode([*sealed_old, *sealed_new])
    assert [p.data for p in opened] == [b"before", b"after"]


async def test_a_payload_under_an_unknown_key_is_refused() -> None:
    sealed = await EncryptionCodec(KeyRing("k9", {"k9": b"\x09" * 32})).encode([plain("x")])
    with pytest.raises(UnknownKey):
        await EncryptionCodec(KeyRing("k1", {"k1": b"\x01" * 32})).decode(sealed)


@pytest.mark.parametrize("flipped", [0, NONCE_BYTES, -1], ids=["nonce", "ciphertext", "tag"])
async def test_a_tampered_payload_is_refused(flipped: int) -> None:
    ring = KeyRing("k1", {"k1": b"\x01" * 32})
    sealed = (await EncryptionCodec(ring).encode([plain("amount=100")]))[0]
    data = bytearray(sealed.data)
    data[flipped] ^= 1
    sealed.data = bytes(data)
    # AES-GCM's authentication fails: the payload is refused, never decoded to garbage.
    with pytest.raises(InvalidTag):
        await EncryptionCodec(ring).decode([sealed])


async def test_a_payload_relabelled_with_another_known_key_is_refused() -> None:
    # The key id is authenticated data: moving a payload under another key of the ring
    # does not get it decrypted (with the wrong key) either.
    ring = KeyRing("k1", {"k1": b"\x01" * 32, "k2": b"\x01" * 32})
    sealed = (await EncryptionCodec(ring).encode([plain("amount=100")]))[0]
    sealed.metadata[codec.KEY_ID] = b"k2"
    with pytest.raises(InvalidTag):
        await EncryptionCodec(ring).decode([sealed])


async def test_a_payload_in_clear_is_refused() -> None:
    # Passed through, anyone who could start a workflow in Temporal gave the workers
    # any input (a RegisterAccount with the admin role) without the key ring.
    ring = KeyRing("k1", {"k1": b"\x01" * 32})
    with pytest.raises(codec.Unencrypted):
        await EncryptionCodec(ring).decode([plain('{"roles": ["admin"]}')])


async def test_the_local_key_ring_is_created_once_and_kept(tmp_path: Path) -> None:
    settings = config.load({"AGORA_STATE_DIR": str(tmp_path)})
    first = codec.load_or_create(settings)
    assert codec.load_or_create(settings) == first
    assert (tmp_path / "secrets" / "codec-keys.json").stat().st_mode & 0o077 == 0


def test_production_never_invents_a_key(tmp_path: Path) -> None:
    settings = config.load({"AGORA_PROFILE": "prod", "AGORA_STATE_DIR": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="AGORA_CODEC_KEYS_FILE"):
        codec.load_or_create(settings)


async def test_the_converter_round_trips_a_dataclass_through_encryption() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Order:
        customer: str
        total: int

    ring = KeyRing("k1", {"k1": b"\x01" * 32})
    converter = dataclasses.replace(DataConverter.default, payload_codec=EncryptionCodec(ring))
    payloads = await converter.encode([Order("ann@example.com", 1999)])
    assert b"ann@example.com" not in payloads[0].SerializeToString()
    assert await converter.decode(payloads, [Order]) == [Order("ann@example.com", 1999)]


# ---- rotation in a rolling deployment: add (decrypt-only), then activate -----------


async def test_an_added_key_decrypts_everywhere_before_anything_encrypts_with_it() -> None:
    old = KeyRing("k1", {"k1": b"\x01" * 32})
    added, kid = old.with_new_key()
    assert added.active == "k1" and kid in added.keys
    # A pod restarted with the added key still writes under k1: the pods not yet
    # restarted (old ring) read everything it writes.
    sealed = await EncryptionCodec(added).encode([plain("order")])
    assert sealed[0].metadata[codec.KEY_ID] == b"k1"
    assert [p.data for p in await EncryptionCodec(old).decode(sealed)] == [b"order"]


async def test_while_an_activation_rolls_out_old_and_new_pods_read_each_other() -> None:
    added, kid = KeyRing("k1", {"k1": b"\x01" * 32}).with_new_key()
    activated = added.activated(kid)
    assert activated.keys == added.keys
    from_new = await EncryptionCodec(activated).encode([plain("from new")])
    from_old = await EncryptionCodec(added).encode([plain("from old")])
    assert from_new[0].metadata[codec.KEY_ID] == kid.encode()
    assert [p.data for p in await EncryptionCodec(added).decode(from_new)] == [b"from new"]
    assert [p.data for p in await EncryptionCodec(activated).decode(from_old)] == [b"from old"]


def test_only_a_key_of_the_ring_can_be_activated() -> None:
    with pytest.raises(KeyError, match="k9"):
        KeyRing("k1", {"k1": b"\x01" * 32}).activated("k9")


def test_a_ring_file_written_before_the_two_steps_is_read_and_extended(tmp_path: Path) -> None:
    path = tmp_path / "codec-keys.json"
    path.write_text(
        json.dumps({"active": "k1", "keys": {"k1": base64.b64encode(b"\x01" * 32).decode()}})
    )
    ring, kid = KeyRing.load(path).with_new_key()
    ring.save(path)
    assert KeyRing.load(path) == ring
    assert KeyRing.load(path).active == "k1" and set(ring.keys) == {"k1", kid}


def test_the_cli_adds_a_key_then_activates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "codec-keys.json"
    monkeypatch.setenv("AGORA_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AGORA_CODEC_KEYS_FILE", str(path))
    assert codec.main(["show"]) == 0
    first = KeyRing.load(path)

    assert codec.main(["add"]) == 0
    added = KeyRing.load(path)
    (kid,) = set(added.keys) - set(first.keys)
    assert added.active == first.active

    assert codec.main(["activate", "no-such-key"]) == 1
    assert KeyRing.load(path) == added
    assert codec.main(["activate", kid]) == 0
    assert KeyRing.load(path) == KeyRing(kid, added.keys)
    assert f"activate {kid}" in capsys.readouterr().out
