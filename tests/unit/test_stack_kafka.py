"""The Kafka cluster id the stack formats its storage with."""

from __future__ import annotations

import base64
import uuid

import pytest
from aiokafka.errors import KafkaError

from agora import config
from stack import kafka
from stack.base import ComponentError, Context


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


def test_a_topic_kafka_refused_ends_the_start_with_one_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    async def refused(_: str) -> None:
        raise KafkaError("topics not created: {'orders.events': 'RequestTimedOutError'}")

    monkeypatch.setattr(kafka.agora_kafka, "ensure_topics", refused)
    ctx = Context(config.load({"AGORA_STATE_DIR": str(tmp_path)}))
    with pytest.raises(ComponentError, match=r"orders\.events") as error:
        kafka.Kafka().after_healthy(ctx)
    assert "run the command again" in str(error.value)
