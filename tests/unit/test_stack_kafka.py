"""The Kafka cluster id the stack formats its storage with."""

from __future__ import annotations

import base64
import uuid

import pytest

from stack import kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 encodes as "-" first: the format tool would take "-KF..." for an option.
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=b"\x10" + bytes(15))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    drawn = iter([dashed, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(drawn))
    value = kafka.cluster_id()
    assert value == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(value) == 22
