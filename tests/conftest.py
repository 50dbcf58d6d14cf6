"""Shared fixtures: settings of the profile under test (test by default)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator

import pytest

os.environ.setdefault("AGORA_PROFILE", "test")

from agora import config
from agora.config import Settings
from agora.leave import leave


@pytest.fixture(scope="session")
def settings() -> Settings:
    return config.load()


@pytest.fixture(autouse=True)
def python_hooks_kept() -> Iterator[None]:
    """A test that sets up JSON logging in pytest's process (agora.logs) also routes
    Python's uncaught-exception hooks to it: they are put back after each test."""
    kept = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    yield
    sys.excepthook, threading.excepthook, sys.unraisablehook = kept


_EXIT_STATUS = pytest.StashKey[int]()


# The session's tests used Temporal clients: leave without the interpreter's teardown,
# which can abort after the last test (agora/leave.py), with pytest's own status.
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _EXIT_STATUS in config.stash:
        leave(config.stash[_EXIT_STATUS])
