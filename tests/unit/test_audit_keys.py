"""Trusted checkpoint keys across a rotation: the current key and the retired ones."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest

from agora import config
from workers.audit import verify
from workers.audit.checkpoints import StoredCheckpoint
from workers.audit.errors import SigningKeyError
from workers.audit.signing import (
    RETIRED_KEYS_FILE,
    CheckpointSigner,
    TrustedKeys,
    load_trusted_keys,
    parse_public_keys,
)

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
OLD, NEW, OTHER = (CheckpointSigner(bytes([n]) * 32) for n in (1, 2, 3))


def signed_by(signer: CheckpointSigner, sequence: int = 10) -> StoredCheckpoint:
    head = b"\x07" * 32
    return StoredCheckpoint(
        sequence, head, NOW, signer.public_key.key_id, signer.sign(sequence, head, NOW)
    )


def b64(signer: CheckpointSigner) -> str:
    return base64.b64encode(signer.public_key.raw).decode()


def test_a_retired_keys_checkpoint_is_trusted_after_a_rotation_only_when_that_key_is() -> None:
    checkpoint = signed_by(OLD)
    assert checkpoint.verifies_under(TrustedKeys(NEW.public_key, (OLD.public_key,)))
    assert not checkpoint.verifies_under(TrustedKeys(NEW.public_key))
    assert TrustedKeys(NEW.public_key, (OLD.public_key,)).key_ids == [
        NEW.public_key.key_id,
        OLD.public_key.key_id,
    ]


def test_a_checkpoint_claiming_a_trusted_key_it_was_not_signed_with_is_not_trusted() -> None:
    forged = signed_by(OTHER)
    claimed = StoredCheckpoint(
        forged.log_sequence, forged.head_hash, NOW, OLD.public_key.key_id, forged.signature
    )
    assert not claimed.verifies_under(TrustedKeys(NEW.public_key, (OLD.public_key,)))


def settings_in(state: Path) -> config.Settings:
    return config.load({"AGORA_PROFILE": "test", "AGORA_STATE_DIR": str(state)})


def test_retired_keys_are_read_from_the_state_folder_in_base64_or_pem(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    assert load_trusted_keys(settings, NEW) == TrustedKeys(NEW.public_key)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / RETIRED_KEYS_FILE).write_text(
        f"# rotated out 2026-01\n{b64(OLD)}  # the first key\n\n{OTHER.public_key.pem}"
        f"{b64(NEW)}\n{b64(OLD)}\n"  # the current key and a repeat are left out
    )
    keys = load_trusted_keys(settings, NEW)
    assert keys == TrustedKeys(NEW.public_key, (OLD.public_key, OTHER.public_key))


def test_retired_keys_from_the_environment_win_over_the_file(tmp_path: Path) -> None:
    # What a Kubernetes deployment sets (the state folder is an emptyDir there).
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / RETIRED_KEYS_FILE).write_text(f"{b64(OTHER)}\n")
    env = {"AGORA_PROFILE": "test", "AGORA_STATE_DIR": str(tmp_path)}
    settings = config.load({**env, "AGORA_AUDIT_RETIRED_PUBLIC_KEYS": f"{b64(OLD)},{b64(NEW)}"})
    assert load_trusted_keys(settings, NEW) == TrustedKeys(NEW.public_key, (OLD.public_key,))
    broken = config.load({**env, "AGORA_AUDIT_RETIRED_PUBLIC_KEYS": "not base64!"})
    with pytest.raises(SigningKeyError, match="AGORA_AUDIT_RETIRED_PUBLIC_KEYS"):
        load_trusted_keys(broken, NEW)


def test_a_malformed_retired_keys_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    path = tmp_path / "secrets" / RETIRED_KEYS_FILE
    for text in (
        "not base64!\n",
        base64.b64encode(b"short").decode(),
        "-----BEGIN PUBLIC KEY-----\n",
    ):
        path.write_text(text)
        with pytest.raises(SigningKeyError, match=RETIRED_KEYS_FILE):
            load_trusted_keys(settings_in(tmp_path), NEW)
    assert parse_public_keys("") == ()


def test_the_cli_trusts_the_keys_it_is_given(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    keys = verify.trusted_keys(settings, b64(NEW), [b64(OLD), OTHER.public_key.pem])
    assert keys == TrustedKeys(NEW.public_key, (OLD.public_key, OTHER.public_key))
    with pytest.raises(ValueError, match="--public-key"):
        verify.trusted_keys(settings, "", [b64(OLD)])
