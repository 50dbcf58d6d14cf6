"""The one way integration tests wait for something asynchronous to happen.

Events, projections, indexes and workers catch up in their own time: a test
polls a probe until it answers, and fails (never falls through) when it does not
within the limit. The limit is a ceiling for a loaded machine, not a timing the
test asserts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float = 30,
    what: str = "condition",
    interval: float = 0.2,
) -> T:
    """Poll `probe` until it returns something truthy and return that value; raise
    AssertionError, naming `what` and the last value seen, after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)
