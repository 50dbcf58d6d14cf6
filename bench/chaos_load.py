"""The chaos run's steady load: orders, price changes, product reads and searches.

Everything goes through the gateway over HTTP, as a shop's clients would. Each
logical request is retried the way a well-behaved client retries: the same
`Idempotency-Key` on every attempt (so a retried order is the same order and a
retried price change the same change), exponential backoff, and a bounded
budget. A request counts as an error only when it still fails once the budget
is spent; every attempt is kept, so the raw error rate of a fault window can be
computed as well.

The rates are open-loop (a request starts every 1/rate seconds whatever the
previous one is doing) under a cap on requests in flight, so a fault shows up
as latency and errors rather than silently slowing the load down.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from workers.payments.psp_sim import tokenize

# Answers a client retries: the request may not have been done, or may be done
# and will answer the same with the same key. 409 is here because an order whose
# first attempt is still being priced answers "conflict" to a concurrent retry.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
SEARCH_WORDS = ("headphones", "lamp", "bike", "novel", "kettle", "pro", "classic", "shoe")


@dataclass(frozen=True)
class Attempt:
    started: float  # wall clock (time.time()), so windows line up with fault times
    ended: float
    status: int  # HTTP status; 0 when there was no answer (refused, reset, timed out)
    error: str  # "" when the attempt succeeded

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class Request:
    """One logical request of a client: its attempts and how it ended."""

    kind: str  # order | price | read | search
    started: float
    attempts: list[Attempt] = field(default_factory=list)
    ended: float = 0.0
    ok: bool = False
    order_id: str = ""
    key: str = ""

    @property
    def latency_s(self) -> float:
        return self.ended - self.started


@dataclass
class Credentials:
    """Bearer tokens of the load's customer and admin; `renew` refreshes them after a 401."""

    customer: str
    admin: str
    customer_id: str
    renew: Callable[[Credentials], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Mix:
    """Requests per second of each kind; bounded on purpose (a correctness test)."""

    orders_per_s: float = 2.0
    prices_per_s: float = 1.0
    reads_per_s: float = 4.0
    searches_per_s: float = 1.0
    max_in_flight: int = 48
    budget_s: float = 45.0  # a client gives up on a request after this long
    attempt_timeout_s: float = 12.0


@dataclass(frozen=True)
class Catalog:
    """What the load touches: skus ordered (with ample stock), repriced and read."""

    order_skus: list[str]
    price_skus: list[str]
    read_skus: list[str]


class SteadyLoad:
    """Runs the mix against `base` until stopped; `requests` holds every finished request."""

    def __init__(self, base: str, credentials: Credentials, catalog: Catalog, mix: Mix):
        self.base = base.rstrip("/")
        self.credentials = credentials
        self.catalog = catalog
        self.mix = mix
        self.requests: list[Request] = []
        self.updated_skus: set[str] = set()
        self._rng = random.Random(11)
        self._stop = asyncio.Event()
        self._gate = asyncio.Semaphore(mix.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._lanes: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._live: list[Request] = []  # started, not yet ended
        self._card = tokenize("4242424242424242", 12, 2030).token

    # Observations used while the run goes on -------------------------------------

    def first_ok(self, kind: str, after: float) -> float | None:
        """End time of the first successful attempt of `kind` that started after `after`."""
        ends = [
            a.ended
            for r in self.requests + self._in_flight()
            if r.kind == kind
            for a in r.attempts
            if a.ok and a.started >= after
        ]
        return min(ends) if ends else None

    def accepted_orders(self) -> list[str]:
        return [r.order_id for r in self.requests if r.kind == "order" and r.ok]

    def _in_flight(self) -> list[Request]:
        return [r for r in self._live if not r.ended]

    # Lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.mix.max_in_flight),
            timeout=aiohttp.ClientTimeout(total=self.mix.attempt_timeout_s + 3),
        )
        lanes: list[tuple[float, Callable[[Request], Awaitable[None]], str]] = [
            (self.mix.orders_per_s, self._order, "order"),
            (self.mix.prices_per_s, self._price, "price"),
            (self.mix.reads_per_s, self._read, "read"),
            (self.mix.searches_per_s, self._search, "search"),
        ]
        self._lanes = [
            asyncio.create_task(self._lane(rate, body, kind))
            for rate, body, kind in lanes
            if rate > 0
        ]

    async def stop(self) -> None:
        """Stop starting requests; wait for those in flight to end (each is bounded)."""
        self._stop.set()
        for lane in self._lanes:
            lane.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._lanes, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _lane(
        self, rate: float, body: Callable[[Request], Awaitable[None]], kind: str
    ) -> None:
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            await self._gate.acquire()
            request = Request(kind=kind, started=time.time())
            self._live.append(request)
            task = asyncio.create_task(self._run(request, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _run(self, request: Request, body: Callable[[Request], Awaitable[None]]) -> None:
        try:
            await body(request)
        finally:
            request.ended = time.time()
            self.requests.append(request)
            self._live.remove(request)
            self._gate.release()

    # The client's retry loop -----------------------------------------------------

    async def _call(
        self,
        request: Request,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...],
        admin: bool = False,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Attempts until an `ok` answer, a final refusal or the budget is spent."""
        # A loop, not tenacity: each attempt is recorded, a 401 renews the token once
        # without counting as a retry, and the seeded jitter keeps a run reproducible.
        assert self._http is not None
        deadline = request.started + self.mix.budget_s
        backoff = 0.25
        renewed = False
        while True:
            token = self.credentials.admin if admin else self.credentials.customer
            started = time.time()
            status, error, body = 0, "", None
            try:
                async with self._http.request(
                    method,
                    f"{self.base}{path}",
                    json=json,
                    headers={"Authorization": f"Bearer {token}", **(headers or {})},
                ) as response:
                    status = response.status
                    body = await response.json(content_type=None)
                    if status not in ok:
                        kind = (
                            body.get("type", "").rsplit("/", 1)[-1]
                            if isinstance(body, dict)
                            else ""
                        )
                        error = f"{status} {kind}".strip()
            except (aiohttp.ClientError, TimeoutError, ValueError) as failure:
                error = type(failure).__name__
            request.attempts.append(Attempt(started, time.time(), status, error))
            if not error:
                request.ok = True
                return body
            if status == 401 and not renewed and self.credentials.renew is not None:
                renewed = True  # an access token expired during a long run: sign in again
                await self.credentials.renew(self.credentials)
                continue
            if status and status not in RETRYABLE_STATUS:
                return None  # a final refusal: retrying would get the same answer
            if time.time() + backoff > deadline:
                return None
            await asyncio.sleep(backoff * (0.5 + self._rng.random()))
            backoff = min(backoff * 2, 4.0)

    # The four kinds of request -------------------------------------------------------

    async def _order(self, request: Request) -> None:
        request.key = f"chaos-{uuid.uuid4().hex}"
        sku = self._rng.choice(self.catalog.order_skus)
        body = await self._call(
            request,
            "POST",
            "/v1/orders",
            ok=(200, 201),
            json={
                "lines": [{"sku": sku, "quantity": self._rng.randint(1, 3)}],
                "currency": "EUR",
                "payment": {"card_token": self._card},
            },
            headers={
                "Idempotency-Key": request.key,
                "X-Request-Timeout": str(int(self.mix.attempt_timeout_s * 1000) - 2000),
            },
        )
        if body:
            request.order_id = str(body["order_id"])

    async def _price(self, request: Request) -> None:
        request.key = f"chaos-price-{uuid.uuid4().hex}"
        sku = self._rng.choice(self.catalog.price_skus)
        self.updated_skus.add(sku)  # even a failed change may have been applied
        await self._call(
            request,
            "POST",
            f"/v1/admin/products/{sku}/price",
            ok=(200,),
            admin=True,
            json={"amount_minor": self._rng.randint(100, 99_999), "currency": "EUR"},
            headers={"Idempotency-Key": request.key, "X-Request-Timeout": "10000"},
        )

    async def _read(self, request: Request) -> None:
        sku = self._rng.choice(self.catalog.read_skus)
        await self._call(request, "GET", f"/v1/products/{sku}", ok=(200,))

    async def _search(self, request: Request) -> None:
        word = self._rng.choice(SEARCH_WORDS)
        await self._call(request, "GET", f"/v1/search?q={word}&limit=10", ok=(200,))
