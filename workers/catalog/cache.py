"""Catalog's read-through product cache in Redis.

* Entries are `<version>:<Product protobuf>` under `catalog:product:<sku>`, with a
  bounded TTL (jittered, so keys loaded together do not expire together). An
  unknown sku is cached briefly as version 0 (negative caching).
* Every write goes through one Lua script that keeps the higher version. A
  reader that loaded a row just before a commit can therefore never overwrite
  the writer's fresher entry: staleness is bounded by the write, not the TTL.
* Stampede protection: one loader per key. In one process concurrent misses
  share one future (single flight); across processes a short `SET NX PX` lock
  elects the loader and the others poll the key briefly, then fall back to the
  database rather than wait longer.
* Redis failures never fail a read: the caller's loader answers, and a
  breaker skips Redis for a moment so an outage costs no per-request timeouts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as aioredis
from opentelemetry import metrics
from redis.exceptions import RedisError

from contracts.agora.catalog.v1 import Product

log = logging.getLogger(__name__)
_meter = metrics.get_meter("agora.catalog.cache")
_lookups = _meter.create_counter(
    "agora_catalog_cache_lookups", description="product cache lookups by outcome"
)

# KEYS[1] = entry; ARGV = version, payload, ttl_ms. Keeps whichever version is higher.
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local v = tonumber(string.match(current, '^(%d+):'))
  if v and v > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
"""
# KEYS[1] = lock; ARGV[1] = token. Releases only a lock this loader still holds.
# Not redis.asyncio.lock.Lock: its release raises LockNotOwnedError, a RedisError, when
# the lease ran out during a slow load, which here would trip the breaker as an outage.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Loader = Callable[[str], Awaitable[Product | None]]
BatchLoader = Callable[[Sequence[str]], Awaitable[dict[str, Product]]]


def encode(product: Product) -> bytes:
    return bytes(product)


def decode(raw: bytes | str) -> tuple[int, Product | None]:
    data = raw.encode() if isinstance(raw, str) else raw
    version, _, payload = data.partition(b":")
    if int(version) == 0:
        return 0, None
    return int(version), Product.parse(payload)


class ProductCache:
    """See the module docstring. `prefix` is the service's Redis prefix ("catalog:")."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "catalog:",
        *,
        ttl_s: float = 300,
        negative_ttl_s: float = 30,
        lock_ms: int = 2000,
        wait_s: float = 0.2,
        breaker_s: float = 1.0,
    ):
        self.redis = redis
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        self.negative_ttl_ms = int(negative_ttl_s * 1000)
        self.lock_ms = lock_ms
        self.wait_s = wait_s
        self.breaker_s = breaker_s
        self._open_until = 0.0
        self._inflight: dict[str, asyncio.Future[Product | None]] = {}
        self._set_if_newer = redis.register_script(_SET_IF_NEWER)
        self._release = redis.register_script(_RELEASE)

    def key(self, sku: str) -> str:
        return f"{self.prefix}product:{sku}"

    def _lock_key(self, sku: str) -> str:
        return f"{self.prefix}lock:product:{sku}"

    # The breaker is a timestamp, not a library (none is a dependency): one error skips
    # Redis for breaker_s; a library's failure threshold lets more reads wait out timeouts.
    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    def _trip(self, error: Exception) -> None:
        if self.available:
            log.warning(
                "product cache unavailable, reading the database", extra={"error": repr(error)}
            )
        self._open_until = time.monotonic() + self.breaker_s
        _lookups.add(1, {"outcome": "error"})

    def _ttl_ms(self, negative: bool) -> int:
        base = self.negative_ttl_ms if negative else self.ttl_ms
        return int(base * random.uniform(0.9, 1.0))

    # Writes ------------------------------------------------------------------

    async def put(self, product: Product) -> bool:
        """Store `product` unless a newer version is cached. Raises RedisError (write side)."""
        stored = await self._set_if_newer(
            keys=[self.key(product.sku)],
            args=[product.version, encode(product), self._ttl_ms(False)],
        )
        return bool(stored)

    async def _put_quietly(self, sku: str, product: Product | None) -> None:
        try:
            if product is None:
                await self._set_if_newer(keys=[self.key(sku)], args=[0, b"", self._ttl_ms(True)])
            else:
                await self.put(product)
        except RedisError as error:
            self._trip(error)

    # Reads -------------------------------------------------------------------

    async def get(self, sku: str, loader: Loader) -> Product | None:
        # Redis away (the breaker open, or this read failing): the database, but still one
        # load per key in this process. Each caller loaded for itself: 200 concurrent
        # reads of a popular product were 200 queries, just when the cache was gone.
        if not self.available:
            return await self._single_flight(sku, lambda: loader(sku))
        try:
            raw = await self.redis.get(self.key(sku))
        except RedisError as error:
            self._trip(error)
            return await self._single_flight(sku, lambda: loader(sku))
        if raw is not None:
            _lookups.add(1, {"outcome": "hit"})
            return decode(raw)[1]
        _lookups.add(1, {"outcome": "miss"})
        return await self._single_flight(sku, lambda: self._load(sku, loader))

    async def _single_flight(
        self, sku: str, load: Callable[[], Awaitable[Product | None]]
    ) -> Product | None:
        """The load of `sku` in flight in this process, or `load` started as it."""
        pending = self._inflight.get(sku)
        if pending is None:
            # The load is its own task, awaited through a shield by every caller, the
            # first included: a caller cancelled (its deadline passed) leaves the load,
            # and everyone else waiting on it, alone.
            pending = asyncio.ensure_future(load())
            self._inflight[sku] = pending
            pending.add_done_callback(functools.partial(self._landed, sku))
        return await asyncio.shield(pending)

    def _landed(self, sku: str, load: asyncio.Future[Product | None]) -> None:
        if self._inflight.get(sku) is load:
            del self._inflight[sku]
        if not load.cancelled():
            load.exception()  # retrieved: its callers re-raise it, nobody logs it as lost

    async def _load(self, sku: str, loader: Loader) -> Product | None:
        token = uuid.uuid4().hex
        try:
            elected = await self.redis.set(self._lock_key(sku), token, nx=True, px=self.lock_ms)
        except RedisError as error:
            self._trip(error)
            return await loader(sku)
        if not elected:
            # Another process is loading this key: wait briefly for its entry.
            deadline = time.monotonic() + self.wait_s
            delay = 0.005
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                try:
                    raw = await self.redis.get(self.key(sku))
                except RedisError as error:
                    self._trip(error)
                    break
                if raw is not None:
                    return decode(raw)[1]
            return await loader(sku)
        try:
            product = await loader(sku)
            await self._put_quietly(sku, product)
            return product
        finally:
            try:
                await self._release(keys=[self._lock_key(sku)], args=[token])
            except RedisError as error:
                self._trip(error)

    async def get_many(self, skus: Sequence[str], loader: BatchLoader) -> dict[str, Product]:
        """Products by sku (unknown skus absent). Misses load in one query, without the lock:
        a batch is one request's worth of keys, and the single-key path guards the hot ones."""
        unique = list(dict.fromkeys(skus))
        found: dict[str, Product] = {}
        missing = unique
        if self.available and unique:
            try:
                raws = await self.redis.mget([self.key(s) for s in unique])
            except RedisError as error:
                self._trip(error)
                raws = [None] * len(unique)
            missing = []
            for sku, raw in zip(unique, raws, strict=True):
                if raw is None:
                    missing.append(sku)
                    continue
                product = decode(raw)[1]
                if product is not None:
                    found[sku] = product
            _lookups.add(len(unique) - len(missing), {"outcome": "hit"})
            _lookups.add(len(missing), {"outcome": "miss"})
        if missing:
            loaded = await loader(missing)
            found.update(loaded)
            for sku in missing:
                if not self.available:
                    break  # tripped meanwhile: no more writes waiting out the timeout
                await self._put_quietly(sku, loaded.get(sku))
        return found

    async def get_json(self, key: str) -> bytes | None:
        """A derived entry (a list page); None on a miss or an outage."""
        if not self.available:
            return None
        try:
            raw = await self.redis.get(f"{self.prefix}{key}")
            return raw.encode() if isinstance(raw, str) else raw
        except RedisError as error:
            self._trip(error)
            return None

    async def set_json(self, key: str, value: bytes, ttl_s: float) -> None:
        if not self.available:
            return
        try:
            await self.redis.set(f"{self.prefix}{key}", value, px=int(ttl_s * 1000))
        except RedisError as error:
            self._trip(error)
