"""What the middlewares learn about a request, stored on it under typed keys."""

from __future__ import annotations

import time

from aiohttp import web

from gateway.tokens import Principal


class ServerTiming:
    """Durations per stage, rendered as the `Server-Timing` response header (milliseconds)."""

    __slots__ = ("_durations",)

    def __init__(self) -> None:
        self._durations: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self._durations[stage] = self._durations.get(stage, 0.0) + seconds

    def get(self, stage: str) -> float | None:
        return self._durations.get(stage)

    def header(self) -> str:
        return ", ".join(f"{stage};dur={s * 1000:.3f}" for stage, s in self._durations.items())


REQUEST_ID = web.RequestKey("request_id", str)
TRACE_ID = web.RequestKey("trace_id", str)
TIMING = web.RequestKey("timing", ServerTiming)
# time.monotonic() by which the whole request must be answered; upstream calls get what is left.
DEADLINE = web.RequestKey("deadline", float)
PRINCIPAL = web.RequestKey("principal", Principal)


def remaining_s(request: web.Request) -> float:
    return request[DEADLINE] - time.monotonic()


def principal_of(request: web.Request) -> Principal:
    """The verified caller; only on routes that require a token."""
    return request[PRINCIPAL]
