"""argon2id password hashing, off the event loop and bounded per process.

An argon2id hash or verification is meant to be expensive: with argon2-cffi's
defaults, 64 MiB of memory and tens of milliseconds of CPU each. Unbounded, a burst
of registrations (the gateway hashes them) or of sign-ins with made-up emails
(identity verifies against a dummy hash) runs as many at once as the default thread
pool has threads: CPU for every other route gone, and memory past a pod's limit.
So at most `concurrency` run at once per process and at most `queue` more wait;
beyond that a call is refused with PasswordsBusy (gRPC RESOURCE_EXHAUSTED, HTTP 429
with Retry-After), which a client retries.

(asyncio.Semaphore is the bound; no library adds anything for a counter of waiters.)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from grpclib.const import Status

from agora.config import Settings
from agora.errors import DomainError

T = TypeVar("T")


class PasswordsBusy(DomainError):
    """More passwords to hash or verify than this process takes at once: retry shortly."""

    code = "passwords-busy"
    grpc_status = Status.RESOURCE_EXHAUSTED
    http_status = 429
    failure_type = "PasswordsBusy"


class Passwords:
    def __init__(
        self, *, concurrency: int = 2, queue: int = 16, hasher: PasswordHasher | None = None
    ) -> None:
        self.hasher = hasher or PasswordHasher()
        self._slots = asyncio.Semaphore(concurrency)
        self._admitted = 0
        self._limit = concurrency + queue

    @classmethod
    def from_settings(cls, settings: Settings) -> Passwords:
        return cls(
            concurrency=settings.password_hash_concurrency, queue=settings.password_hash_queue
        )

    async def _run(self, work: Callable[..., T], *args: str) -> T:
        if self._admitted >= self._limit:
            raise PasswordsBusy("too many passwords are being checked at once; retry shortly")
        self._admitted += 1
        try:
            await self._slots.acquire()
        except BaseException:
            self._admitted -= 1
            raise
        # The slot is the thread's, not the caller's: a caller cancelled (a gRPC
        # deadline) leaves its hash running, so the slot is freed when the hash ends.
        running = asyncio.ensure_future(asyncio.to_thread(work, *args))
        running.add_done_callback(self._release)
        return await asyncio.shield(running)

    def _release(self, _: object) -> None:
        self._slots.release()
        self._admitted -= 1

    async def hash(self, password: str) -> str:
        return await self._run(self.hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; with no hash (an unknown email) it verifies
        against a dummy one all the same, so timing does not tell which emails exist."""
        if password_hash is None:
            await self._run(self._verify_unknown, password)
            return False
        return await self._run(self._verify, password_hash, password)

    async def rehash_if_needed(self, password_hash: str, password: str) -> str | None:
        """A fresh hash of a just-verified password when its stored hash was made with
        other (older, weaker) parameters than the current ones; None when it is current."""
        try:
            stale = self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return None
        if not stale:
            return None
        try:
            return await self.hash(password)
        except PasswordsBusy:
            return None  # best effort: the next sign-in upgrades it; this one succeeds

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _verify_unknown(self, password: str) -> bool:
        return self._verify(self._dummy, password)

    @functools.cached_property
    def _dummy(self) -> str:
        return self.hasher.hash("agora-no-such-account")
