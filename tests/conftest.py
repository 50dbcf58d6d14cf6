"""Shared fixtures: settings of the profile under test (test by default)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("AGORA_PROFILE", "test")

from agora import config
from agora.config import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return config.load()
