"""A refresh that cannot sign its new token spends nothing: the client's retry is no reuse."""

from __future__ import annotations

from typing import Any

import pytest

from workers.identity.signin import TokenService


class KeyRingDown:
    async def signing_key(self) -> Any:
        raise ConnectionError("the key ring could not reload its keys")


class RecordingSessions:
    def __init__(self) -> None:
        self.rotated: list[str] = []

    async def rotate(self, pool: Any, refresh_token: str) -> Any:
        self.rotated.append(refresh_token)
        raise AssertionError("rotated although no token could be signed")


async def test_a_refresh_whose_key_is_unavailable_does_not_rotate_the_token() -> None:
    sessions = RecordingSessions()
    service = TokenService(
        pool=None,  # type: ignore[arg-type]
        keys=KeyRingDown(),  # type: ignore[arg-type]
        sessions=sessions,  # type: ignore[arg-type]
        clients=None,  # type: ignore[arg-type]
        policy=None,  # type: ignore[arg-type]
    )
    with pytest.raises(ConnectionError):
        await service.refresh("rt_presented")
    assert sessions.rotated == []
