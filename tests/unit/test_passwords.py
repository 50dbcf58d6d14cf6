"""Password hashing bounded per process (agora/passwords.py): a burst of registrations
or sign-ins cannot run more argon2id hashes at once than it allows, and is refused
(429 with Retry-After at the edge) once its queue is full, instead of taking every
thread, every core and the pod's memory."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from argon2 import PasswordHasher

from agora.passwords import Passwords, PasswordsBusy
from gateway.problems import Problem
from gateway.routes import accounts as account_routes
from gateway.schemas import RegisterRequest

# The cheapest argon2id parameters: the tests are about the bound, not the cost.
CHEAP: dict[str, Any] = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


class GatedHasher(PasswordHasher):
    """Each hash waits for the gate; counts how many run at once."""

    def __init__(self) -> None:
        super().__init__(**CHEAP)
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.gate.wait(timeout=30)
            return super().hash(password, salt=salt)
        finally:
            with self.lock:
                self.running -= 1


class RecordingHasher(PasswordHasher):
    """Records each verification it is asked for: (hash, password)."""

    def __init__(self) -> None:
        super().__init__(**CHEAP)
        self.verified: list[tuple[str, str]] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        self.verified.append((str(hash), str(password)))
        return super().verify(hash, password)


async def until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


async def test_no_more_run_at_once_than_allowed_and_a_full_queue_refuses() -> None:
    hasher = GatedHasher()
    passwords = Passwords(concurrency=2, queue=1, hasher=hasher)
    admitted = [asyncio.create_task(passwords.hash(f"password-{i}")) for i in range(3)]
    await until(lambda: hasher.running == 2)
    with pytest.raises(PasswordsBusy):
        await passwords.hash("one too many")  # two running, one waiting: refused at once
    hasher.gate.set()
    hashes = await asyncio.gather(*admitted)
    assert hasher.most == 2
    assert all(hasher.verify(h, f"password-{i}") for i, h in enumerate(hashes))
    assert hasher.verify(await passwords.hash("room again"), "room again")


async def test_only_the_right_password_for_a_real_hash_verifies() -> None:
    passwords = Passwords(concurrency=1, queue=0, hasher=PasswordHasher(**CHEAP))
    real = await passwords.hash("right password")
    assert await passwords.verify(real, "right password")
    assert not await passwords.verify(real, "wrong password")
    assert not await passwords.verify(None, "right password")
    assert not await passwords.verify("not a hash", "right password")


async def test_an_unknown_account_costs_a_verification_against_the_dummy_hash() -> None:
    # Answering at once would let the response time tell which emails have accounts.
    hasher = RecordingHasher()
    passwords = Passwords(concurrency=1, queue=0, hasher=hasher)
    assert not await passwords.verify(None, "a guess")
    assert hasher.verified == [(passwords._dummy, "a guess")]


async def test_an_unknown_account_counts_against_the_bound() -> None:
    hasher = GatedHasher()
    passwords = Passwords(concurrency=1, queue=0, hasher=hasher)
    held = asyncio.create_task(passwords.hash("someone else's"))
    await until(lambda: hasher.running == 1)
    try:
        with pytest.raises(PasswordsBusy):
            await passwords.verify(None, "x")
    finally:
        hasher.gate.set()
        await held


async def test_registration_over_the_bound_is_429_with_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hasher = GatedHasher()
    passwords = Passwords(concurrency=1, queue=0, hasher=hasher)
    monkeypatch.setattr(account_routes, "deps", lambda _: SimpleNamespace(passwords=passwords))
    held = asyncio.create_task(passwords.hash("someone else's"))
    await until(lambda: hasher.running == 1)
    body = RegisterRequest(email="ann@example.com", password="x" * 12, display_name="Ann")
    with pytest.raises(Problem) as refused:
        await account_routes.register(None, body)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.headers) == (429, {"Retry-After": "1"})
    hasher.gate.set()
    await held


async def test_a_cancelled_caller_keeps_its_slot_until_its_hash_ends() -> None:
    # A gRPC deadline cancels the handler; the argon2 thread runs on. Freeing the slot
    # then would let a flood run as many hashes as the thread pool has threads.
    hasher = GatedHasher()
    passwords = Passwords(concurrency=1, queue=0, hasher=hasher)
    caller = asyncio.create_task(passwords.hash("abandoned"))
    await until(lambda: hasher.running == 1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    with pytest.raises(PasswordsBusy):
        await passwords.hash("while the abandoned hash still runs")
    hasher.gate.set()
    await until(lambda: passwords._admitted == 0)  # the done callback runs on the loop
    assert hasher.verify(await passwords.hash("after it"), "after it")


async def test_a_rehash_when_busy_is_skipped_not_a_failed_sign_in() -> None:
    stored = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1).hash("right password")
    hasher = GatedHasher()
    passwords = Passwords(concurrency=1, queue=0, hasher=hasher)
    held = asyncio.create_task(passwords.hash("someone else's"))
    await until(lambda: hasher.running == 1)
    assert hasher.check_needs_rehash(stored)
    assert await passwords.rehash_if_needed(stored, "right password") is None
    hasher.gate.set()
    await held
