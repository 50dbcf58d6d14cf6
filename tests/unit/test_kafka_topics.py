"""ensure_topics reads the broker's answer per topic: aiokafka's admin client raises
for the request, never for one topic's refusal."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from agora import kafka


class Admin:
    """The admin client's surface ensure_topics uses, answering with `errors`."""

    def __init__(self, errors: list[tuple[str, int, str]]):
        self.errors = errors
        self.created: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def list_topics(self) -> list[str]:
        return []

    async def create_topics(self, new: list[Any]) -> Any:
        self.created = [topic.name for topic in new]
        return SimpleNamespace(topic_errors=self.errors)


def use(monkeypatch: pytest.MonkeyPatch, admin: Admin) -> None:
    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", lambda **_: admin)


async def test_a_topic_the_broker_refused_fails_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # 7: REQUEST_TIMED_OUT (right after a restart); the dead-letter twin was created.
    use(monkeypatch, Admin([("orders.events", 7, ""), ("orders.events.dlq", 0, "")]))
    with pytest.raises(KafkaError, match=r"'orders\.events': 'RequestTimedOutError'"):
        await kafka.ensure_topics("127.0.0.1:1", ["orders.events"])


async def test_topics_created_or_already_there_are_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    # 36: TOPIC_ALREADY_EXISTS, another process created it between the list and the create.
    admin = Admin([("orders.events", 0, ""), ("orders.events.dlq", 36, "exists")])
    use(monkeypatch, admin)
    await kafka.ensure_topics("127.0.0.1:1", ["orders.events"])
    assert admin.created == ["orders.events", "orders.events.dlq"]
