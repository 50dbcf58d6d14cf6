"""The load run's customers and requests, through the gateway's public HTTP API.

Customers are real accounts (signed up and signed in through the gateway), so
each request pays the full auth, per-customer rate limit and upstream path. The
per-customer limits (read 100/s, write 20/s by default) are far above what one
customer sends here: with the default 32 customers the reads would only be
throttled above ~3,000 req/s in total; any 429 is counted as an error.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.load_plan import Sample, parse_server_timing, zipf_weights
from workers.catalog.seed import leaves
from workers.payments.psp_sim import tokenize

PASSWORD = "load run password 123"
SEARCH_WORDS = [
    "headphones", "lamp", "bike", "novel", "kettle", "pro", "classic", "shoe", "tent",
    "desk", "speaker", "laptop", "chair", "helmet", "jacket", "cookbook", "wok", "compact",
]  # fmt: skip
SEARCH_EXTRAS = ["", "", "&sort=price_asc", "&in_stock=true", "&max_price=5000", "&facet=brand"]
EXPECTED = {"product": 200, "listing": 200, "search": 200, "order_place": 201, "order_read": 200}


@dataclass
class Customer:
    email: str
    token: str = ""
    renew_at: float = 0.0  # time.monotonic() after which the token is renewed between steps


@dataclass
class Placed:
    customer: Customer
    order_id: str


async def _auth_call(http: aiohttp.ClientSession, url: str, body: dict[str, str]) -> Any:
    """A sign-up or sign-in call, waiting out the per-IP limit of the auth routes."""
    # A loop, not tenacity: each wait is the answer's Retry-After, which tenacity would
    # need a custom wait strategy to read back out of the attempt's outcome.
    for _ in range(60):
        async with http.post(url, json=body) as response:
            if response.status == 429:
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status not in (200, 201):
                raise RuntimeError(f"{url}: {response.status} {await response.text()}")
            return await response.json()
    raise RuntimeError(f"{url}: still rate limited after 60 tries")


async def sign_in(http: aiohttp.ClientSession, base: str, customer: Customer) -> None:
    answer = await _auth_call(
        http, f"{base}/v1/auth/signin", {"email": customer.email, "password": PASSWORD}
    )
    customer.token = answer["access_token"]
    # Renew at half the lifetime: a step (warm-up + window) must never outlive its tokens.
    customer.renew_at = time.monotonic() + float(answer.get("expires_in") or 900) / 2


async def sign_up(http: aiohttp.ClientSession, base: str, count: int) -> list[Customer]:
    run = uuid.uuid4().hex[:8]
    customers = []
    for n in range(count):
        customer = Customer(email=f"load-{run}-{n}@example.com")
        await _auth_call(
            http,
            f"{base}/v1/accounts",
            {"email": customer.email, "password": PASSWORD, "display_name": f"Load {n}"},
        )
        await sign_in(http, base, customer)
        customers.append(customer)
    return customers


async def renew_due(http: aiohttp.ClientSession, base: str, customers: list[Customer]) -> int:
    due = [c for c in customers if time.monotonic() >= c.renew_at]
    for customer in due:
        await sign_in(http, base, customer)
    return len(due)


@dataclass
class Workload:
    """Chooses each request: which customer, which product, category, query or order."""

    base: str
    customers: list[Customer]
    skus: list[str]
    order_skus: list[str]
    rng: random.Random
    timeout_s: float
    placed: deque[Placed] = field(default_factory=lambda: deque(maxlen=2_000))

    def __post_init__(self) -> None:
        # Popularity follows Zipf over a shuffled catalog: a few products are hot,
        # most are rarely read (and so are cache misses now and then).
        self._by_rank = self.skus[:]
        self.rng.shuffle(self._by_rank)
        self._cum = zipf_weights(len(self._by_rank))
        self._categories = [leaf.path for leaf in leaves()]
        self._categories += sorted({path.split("/")[0] for path in self._categories})
        self._card = tokenize("4242424242424242", 12, 2030).token

    def _request(self, kind: str) -> tuple[str, str, Customer, dict[str, Any] | None, str]:
        """(method, url, customer, json body, idempotency key) for one request of `kind`."""
        rng = self.rng
        customer = rng.choice(self.customers)
        if kind == "product":
            sku = rng.choices(self._by_rank, cum_weights=self._cum)[0]
            return "GET", f"{self.base}/v1/products/{sku}", customer, None, ""
        if kind == "listing":
            category = rng.choice(self._categories)
            return (
                "GET",
                f"{self.base}/v1/products?category={category}&limit=20",
                customer,
                None,
                "",
            )
        if kind == "search":
            query = f"q={rng.choice(SEARCH_WORDS)}&facet=category&facet=price"
            url = f"{self.base}/v1/search?{query}{rng.choice(SEARCH_EXTRAS)}"
            return "GET", url, customer, None, ""
        if kind == "order_place":
            lines = [
                {"sku": sku, "quantity": rng.randint(1, 2)}
                for sku in rng.sample(self.order_skus, rng.choice([1, 1, 2]))
            ]
            body = {"lines": lines, "currency": "EUR", "payment": {"card_token": self._card}}
            key = f"load-{uuid.uuid4()}"  # fresh per run: a replayed key would answer a stale order
            return "POST", f"{self.base}/v1/orders", customer, body, key
        if kind == "order_read":
            if self.placed:
                placed = self.placed[rng.randrange(len(self.placed))]
                url = f"{self.base}/v1/orders/{placed.order_id}"
                return "GET", url, placed.customer, None, ""
            # No order placed yet (the very first requests): the customer's order list.
            return "GET", f"{self.base}/v1/orders?limit=5", customer, None, ""
        raise ValueError(f"unknown request kind {kind!r}")

    async def fire(self, http: aiohttp.ClientSession, kind: str, due: float) -> Sample:
        """Send one request due at `due` (time.monotonic()) and time it from then."""
        method, url, customer, body, key = self._request(kind)
        headers = {"Authorization": f"Bearer {customer.token}"}
        if key:
            headers["Idempotency-Key"] = key
        sent = time.monotonic()
        stages: dict[str, float] = {}
        try:
            async with asyncio.timeout(self.timeout_s):
                async with http.request(method, url, json=body, headers=headers) as response:
                    answer = await response.read()
                    status = response.status
                    stages = parse_server_timing(response.headers.get("Server-Timing", ""))
            outcome = str(status)
            ok = status == EXPECTED[kind]
            if ok and kind == "order_place":
                order_id = _order_id(answer)
                if order_id:
                    self.placed.append(Placed(customer, order_id))
        except TimeoutError:
            outcome, ok = "timeout", False
        except aiohttp.ClientError as error:
            outcome, ok = type(error).__name__, False
        done = time.monotonic()
        return Sample(kind, due, done - due, sent - due, outcome, ok, stages)


def _order_id(answer: bytes) -> str:
    try:
        return str(json.loads(answer).get("order_id", ""))
    except ValueError:
        return ""
