"""Private keys are readable by their owner only from the moment they exist.

Written, then chmod-ed, a key file was the umask's 0644 meanwhile: another local
user opening it then keeps reading it after the chmod.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from agora import pki, secrets
from agora.codec import KeyRing


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every file moved into place, with its mode at that moment."""
    seen: list[tuple[str, int]] = []
    replace, link = os.replace, os.link

    def recorded(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        seen.append((Path(dst).name, stat.S_IMODE(os.stat(src).st_mode)))

    def replaced(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        recorded(src, dst)
        replace(src, dst)

    def linked(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        recorded(src, dst)
        link(src, dst)

    chmod = Path.chmod

    def chmod_recorded(path: Path, mode: int, **kwargs: bool) -> None:
        # A file made private after it was written was readable until then.
        before = stat.S_IMODE(os.stat(path).st_mode)
        assert not before & 0o077, f"{path.name} was {before:o} before its chmod"
        chmod(path, mode, **kwargs)

    monkeypatch.setattr(os, "replace", replaced)
    monkeypatch.setattr(os, "link", linked)
    monkeypatch.setattr(Path, "chmod", chmod_recorded)
    old = os.umask(0o022)
    yield seen
    os.umask(old)


def test_the_platform_ca_and_service_keys_are_private_before_they_are_in_place(
    tmp_path: Path, renames: list[tuple[str, int]]
) -> None:
    pki.ensure_pki(tmp_path, ["orders"])
    assert ("ca.key", 0o600) in renames and ("tls.key", 0o600) in renames
    for key in (tmp_path / "ca" / "ca.key", tmp_path / "orders" / "tls.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_the_payload_codec_keys_are_private_before_they_are_in_place(
    tmp_path: Path, renames: list[tuple[str, int]]
) -> None:
    ring, _ = KeyRing("k1", {"k1": bytes(32)}).with_new_key()
    ring.save(tmp_path / "codec-keys.json")
    assert renames == [("codec-keys.json", 0o600)]
    assert KeyRing.load(tmp_path / "codec-keys.json").keys == ring.keys


def test_a_secret_created_once_is_private_before_it_is_in_place(
    tmp_path: Path, renames: list[tuple[str, int]]
) -> None:
    secrets.create_once(tmp_path / "kek", 32)
    secrets.create_once(tmp_path / "kek", 32)  # there already: kept
    assert renames == [("kek", 0o600)]
    assert [p.name for p in tmp_path.iterdir()] == ["kek"]


def test_a_ca_whose_key_is_not_its_certificate_s_is_made_again(tmp_path: Path) -> None:
    # A create_ca cut short between its two files: a new key beside the old
    # certificate. Every certificate issued with it would fail to verify, and be
    # issued again at every check, for ever.
    pki.ensure_pki(tmp_path, ["orders"])
    pki.create_ca(tmp_path / "other")
    (tmp_path / "ca" / "ca.key").write_bytes((tmp_path / "other" / "ca.key").read_bytes())
    (tmp_path / "orders" / "tls.crt").unlink()  # to be issued again
    pki.ensure_pki(tmp_path, ["orders"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    issued = x509.load_pem_x509_certificate((tmp_path / "orders" / "tls.crt").read_bytes())
    issued.verify_directly_issued_by(ca)
