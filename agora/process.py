"""What every Agora process does first: JSON logs, telemetry, certificates, signal handling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from agora.config import SERVICES, Settings
from agora.logs import setup_logging
from agora.pki import ensure_pki
from agora.telemetry import Telemetry, setup_telemetry


def bootstrap(settings: Settings, name: str) -> tuple[Telemetry, asyncio.Event]:
    """Set up the process for `name`; the returned event is set on SIGTERM or SIGINT.

    Must be called from inside the running event loop.
    """
    setup_logging(name, settings.log_level)
    telemetry = setup_telemetry(settings, name)
    if settings.profile != "prod":
        # Locally the platform CA is ours; in a cluster cert-manager issues the certificates.
        ensure_pki(settings.pki_dir, (*SERVICES, "gateway"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return telemetry, stop


log = logging.getLogger(__name__)
T = TypeVar("T")

# A start-up step is retried through its dependency's brief outage for this long, as
# the running processes ride it out, instead of exiting into a crash-loop back-off of
# up to five minutes.
STARTUP_PATIENCE_S = 60.0


class StoppedStarting(Exception):
    """A stop (SIGTERM, Ctrl-C) came while the process was still starting."""


async def starting(
    what: str,
    step: Callable[[], Awaitable[T]],
    *,
    transient: tuple[type[BaseException], ...],
    patience_s: float = STARTUP_PATIENCE_S,
    stop: asyncio.Event | None = None,
) -> T:
    """Run a start-up step, retrying it with backoff while an error in `transient`
    (its dependency away) says it may yet succeed. With `stop` (bootstrap's), a stop
    that comes first cancels the step and raises StoppedStarting: a pod told to stop
    while it waited at start (for the migrations' lock, or up to a minute per step
    through an outage) used its whole grace period and was killed."""
    retried = _retried(what, step, transient=transient, patience_s=patience_s)
    if stop is None:
        return await retried
    work = asyncio.ensure_future(retried)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((work, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        raise StoppedStarting(what)
    return work.result()


async def _retried(
    what: str,
    step: Callable[[], Awaitable[T]],
    *,
    transient: tuple[type[BaseException], ...],
    patience_s: float,
) -> T:
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(patience_s),
        wait=wait_exponential(multiplier=0.5, max=5),
        retry=retry_if_exception_type(transient),
        reraise=True,
        before_sleep=lambda state: log.warning(
            "start-up step failed, retrying",
            extra={
                "step": what,
                "error": repr(state.outcome.exception() if state.outcome else None),
            },
        ),
    ):
        with attempt:
            return await step()
    raise AssertionError("unreachable: the last attempt returns or raises")


# A long-running session (a consumer's, the outbox relay's) broken by its dependency
# is started again after SESSION_RETRY_FIRST_S, doubling per failure in a row up to
# SESSION_RETRY_MAX_S.
SESSION_RETRY_FIRST_S = 0.2
SESSION_RETRY_MAX_S = 5.0


async def keep_running(
    what: str,
    session: Callable[[], Awaitable[None]],
    *,
    transient: tuple[type[BaseException], ...],
    stopping: asyncio.Event,
    progressed: Callable[[], bool],
    extra: dict[str, str],
    logger: logging.Logger,
) -> None:
    """Run `session` until it returns (stopped), starting it again after an error in
    `transient`. The backoff counts failures in a row: a session that got work done
    (`progressed()` when it ended) starts the count over, so an outage a week ago does
    not leave today's restart waiting the longest. A stop during the wait ends it.
    Each restart is logged on `logger` (the caller's), with `extra`.

    Not tenacity, which `starting` uses: its attempt count cannot start over after a
    session that ran fine, and its wait cannot end at a stop."""
    failures = 0
    while True:
        try:
            await session()
            return
        except transient as error:
            failures = 1 if progressed() else failures + 1
            delay = min(SESSION_RETRY_FIRST_S * 2 ** (failures - 1), SESSION_RETRY_MAX_S)
            logger.warning(
                f"{what} interrupted, retrying",
                extra={**extra, "error": repr(error), "retry_in_s": delay},
            )
        if await set_within(stopping, delay):
            return


async def set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` has passed; whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
    return event.is_set()
