"""The observable gauges' callbacks run on the metric exporter's thread, as generators
it consumes while the event loop's thread goes on adding and dropping the keys they
report: a callback iterating the live dict failed ("dictionary changed size during
iteration") and the export lost that gauge."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from agora import kafka, outbox


def interleaved(callback: Callable[[Any], Iterable[Any]], changed: Callable[[], None]) -> int:
    """Consume the callback's observations with `changed` run after the first, as the
    loop's thread does between two of the exporter thread's steps; how many it gave."""
    observations = iter(callback(None))
    next(observations)
    changed()
    return 1 + sum(1 for _ in observations)


@pytest.mark.parametrize(
    ("name", "callback", "entry"),
    [
        ("_lag", kafka._observe_lag, lambda n: (("g", "t", n), 3)),
        ("_sessions", kafka._observe_sessions, lambda n: (f"g{n}", 1)),
        ("_backlog", outbox._observe_backlog, lambda n: (f"s{n}", (2, None))),
        ("_backlog", outbox._observe_age, lambda n: (f"s{n}", (2, 0.0))),
    ],
)
def test_a_gauge_reports_what_it_held_when_a_key_comes_or_goes_meanwhile(
    monkeypatch: pytest.MonkeyPatch, name: str, callback: Any, entry: Any
) -> None:
    module = kafka if name in ("_lag", "_sessions") else outbox
    held = dict(entry(n) for n in range(3))
    monkeypatch.setattr(module, name, held)
    key, value = entry(99)
    assert interleaved(callback, lambda: held.__setitem__(key, value)) == 3
    assert interleaved(callback, lambda: held.pop(key)) == 4
