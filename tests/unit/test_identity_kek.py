"""Secrets at rest: AES-GCM sealing under the KEK, and the local KEK file."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from agora import config
from workers.identity.kek import KekError, SecretBox, decode_kek, load_kek


def test_seal_then_open_round_trips_and_hides_the_plaintext() -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal(b"ags_super-secret", "api_client:1")
    assert b"super-secret" not in sealed
    assert box.open(sealed, "api_client:1") == b"ags_super-secret"
    assert box.seal(b"x", "c") != box.seal(b"x", "c")  # fresh nonce each time


def test_a_sealed_value_does_not_open_in_another_rows_context() -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal(b"secret", "api_client:1")
    with pytest.raises(KekError):
        box.open(sealed, "api_client:2")


def test_a_sealed_value_does_not_open_under_another_kek() -> None:
    sealed = SecretBox(os.urandom(32)).seal(b"secret", "c")
    with pytest.raises(KekError):
        SecretBox(os.urandom(32)).open(sealed, "c")


def test_kek_id_names_the_kek_without_revealing_it() -> None:
    kek = os.urandom(32)
    assert SecretBox(kek).kek_id == SecretBox(kek).kek_id
    assert SecretBox(kek).kek_id != SecretBox(os.urandom(32)).kek_id
    assert kek.hex()[:16] != SecretBox(kek).kek_id


def test_the_kek_must_be_32_bytes_of_base64() -> None:
    with pytest.raises(KekError):
        decode_kek(base64.b64encode(b"short").decode())
    with pytest.raises(KekError):
        decode_kek("not base64!!")


def test_locally_a_kek_is_generated_once_into_the_state_folder(tmp_path: Path) -> None:
    settings = config.load({"AGORA_PROFILE": "test", "AGORA_STATE_DIR": str(tmp_path)})
    first = load_kek(settings)
    assert load_kek(settings) == first and len(first) == 32
    kek_file = tmp_path / "secrets" / "identity-kek"
    assert kek_file.stat().st_mode & 0o777 == 0o600


def test_the_configured_kek_wins_and_prod_requires_one(tmp_path: Path) -> None:
    kek = os.urandom(32)
    env = {"AGORA_STATE_DIR": str(tmp_path), "AGORA_IDENTITY_KEK": base64.b64encode(kek).decode()}
    assert load_kek(config.load({**env, "AGORA_PROFILE": "prod"})) == kek
    with pytest.raises(KekError, match="required"):
        load_kek(config.load({"AGORA_PROFILE": "prod", "AGORA_STATE_DIR": str(tmp_path)}))
