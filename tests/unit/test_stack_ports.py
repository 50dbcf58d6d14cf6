"""Every port of the local stack is checked free before the component using it starts."""

from __future__ import annotations

from collections import Counter

from agora import config
from stack.__main__ import all_components


def test_every_configured_port_belongs_to_exactly_one_component() -> None:
    claimed = Counter(port for component in all_components(True) for port in component.ports)
    assert set(claimed) == set(config.BASE_PORTS)
    assert {port for port, count in claimed.items() if count > 1} == set()
