"""A simulated PSP with documented test cards (docs/payments.md), behind the PSP boundary.

Test cards (any future expiry; any other Luhn-valid number behaves like 4242...):

| card number          | behaviour                                                    |
|----------------------|--------------------------------------------------------------|
| 4242 4242 4242 4242  | authorizes                                                   |
| 5555 5555 5555 4444  | authorizes (mastercard)                                      |
| 4000 0000 0000 9995  | declined: insufficient_funds                                 |
| 4000 0000 0000 0069  | declined: card_expired (so is any card with a past expiry)   |
| 4000 0000 0000 3220  | requires action (3-D-Secure-like)                            |
| 4000 0000 0000 0077  | slow: authorizes, but answers only after `slow_delay_s`      |
| 4000 0000 0000 0119  | flaky: every call fails transiently `flaky_failures` times   |
|                      | per idempotency key, then succeeds                           |

`tokenize` is what a real PSP's client-side library does: the card number goes
in, a token comes out, and the number is gone. The simulator's token names the
card's behaviour, brand and last four digits (a real PSP keeps those in its
vault); it never holds the number.

The simulator's own state (its idempotency records, authorizations, the flaky
counters) lives in a `SimStore`: Redis for the service (`RedisSimStore`, keys
under `payments:psp:`), a dict in unit tests. An operation's record and the money
it moves are written in one atomic step (`SimStore.claim`), first writer wins: the
same key twice moves money once, and a crash never leaves a record without its move.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import re
import secrets
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

import redis.asyncio as aioredis

from agora.cards import holds_card_number, luhn_valid
from workers.payments.psp import (
    ActionRequired,
    AuthorizationOutcome,
    Authorized,
    Card,
    Declined,
    InvalidCardToken,
    PspKeyReused,
    PspRejected,
    PspTransientError,
    Receipt,
)


class Behaviour(StrEnum):
    OK = "ok"
    INSUFFICIENT_FUNDS = "insufficient"
    EXPIRED = "expired"
    REQUIRES_ACTION = "action"
    SLOW = "slow"
    FLAKY = "flaky"


TEST_CARDS: dict[str, Behaviour] = {
    "4242424242424242": Behaviour.OK,
    "5555555555554444": Behaviour.OK,
    "4000000000009995": Behaviour.INSUFFICIENT_FUNDS,
    "4000000000000069": Behaviour.EXPIRED,
    "4000000000003220": Behaviour.REQUIRES_ACTION,
    "4000000000000077": Behaviour.SLOW,
    "4000000000000119": Behaviour.FLAKY,
}

_TOKEN = re.compile(
    r"^tok_(?P<behaviour>[a-z]+)_(?P<brand>[a-z]+)_(?P<last4>[0-9]{4})_(?P<nonce>[0-9a-f]{16})$"
)


def brand_of(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or 2221 <= int(number[:4]) <= 2720:
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    return "card"


def tokenize(pan: str, exp_month: int, exp_year: int, *, today: dt.date | None = None) -> Card:
    """Exchange a card number for a token; raises InvalidCardToken for an invalid number.

    Error messages never repeat the number.
    """
    number = re.sub(r"[\s-]", "", pan)
    # isascii: str.isdigit() also holds for "²" and other digits int() refuses.
    if not (number.isascii() and number.isdigit() and 12 <= len(number) <= 19):
        raise InvalidCardToken("not a valid card number")
    if not luhn_valid(number):
        raise InvalidCardToken("not a valid card number")
    if not 1 <= exp_month <= 12:
        raise InvalidCardToken("invalid expiry month")
    today = today or dt.datetime.now(dt.UTC).date()
    behaviour = TEST_CARDS.get(number, Behaviour.OK)
    if (exp_year, exp_month) < (today.year, today.month):
        behaviour = Behaviour.EXPIRED
    brand = brand_of(number)
    token = ""
    while not token or holds_card_number(token):
        # A nonce of hex digits, alone or after the last four, can be a Luhn-valid run
        # of 12+ decimal ones (about 1 in 330): the gateway would refuse such a token
        # as a card number.
        token = f"tok_{behaviour}_{brand}_{number[-4:]}_{secrets.token_hex(8)}"
    return Card(token=token, brand=brand, last4=number[-4:])


def behaviour_of(token: str) -> tuple[Behaviour, Card]:
    match = _TOKEN.fullmatch(token)
    if match is None or match["behaviour"] not in Behaviour.__members__.values():
        raise InvalidCardToken("card_token is not a token of this PSP")
    card = Card(token=token, brand=match["brand"], last4=match["last4"])
    return Behaviour(match["behaviour"]), card


class SimStore(Protocol):
    """The simulator's state: JSON records by key, plus counters."""

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def add(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        """Store `record` unless the key exists; return what is stored (first writer wins)."""
        ...

    async def claim(
        self,
        key: str,
        record: dict[str, Any],
        auth_key: str,
        seen: dict[str, Any],
        moved: dict[str, Any],
    ) -> dict[str, Any] | None:
        """In one atomic step: if `key` exists, return its record; else, if `auth_key`
        still holds `seen`, store `record` under `key` and `moved` under `auth_key` and
        return `record`; else return None (the authorization changed: read it again)."""
        ...

    async def incr(self, key: str) -> int: ...


class MemorySimStore:
    """A SimStore in a dict, for unit tests."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.counters: dict[str, int] = {}

    async def get(self, key: str) -> dict[str, Any] | None:
        record = self.records.get(key)
        return dict(record) if record is not None else None

    async def add(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        return dict(self.records.setdefault(key, dict(record)))

    async def claim(
        self,
        key: str,
        record: dict[str, Any],
        auth_key: str,
        seen: dict[str, Any],
        moved: dict[str, Any],
    ) -> dict[str, Any] | None:
        # Atomic as it never awaits.
        if key in self.records:
            return dict(self.records[key])
        if self.records.get(auth_key) != seen:
            return None
        self.records[key] = dict(record)
        self.records[auth_key] = dict(moved)
        return dict(record)

    async def incr(self, key: str) -> int:
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]


class RedisSimStore:
    """The SimStore of the running service: Redis keys under `<prefix>psp:`."""

    # A real PSP forgets idempotency keys after a day or so; payments keeps its
    # own first results for good, so this only bounds the simulator's memory. The
    # authorizations themselves (`auth:*`) are the PSP's state and never expire: a
    # refund weeks after the capture must find its authorization.
    TTL_S = 7 * 24 * 3600

    # KEYS: the operation, the authorization. ARGV: the operation's record, its TTL,
    # the authorization as read, the authorization after the move. Records are
    # compared and stored as the caller's JSON, never decoded here (Lua's numbers
    # would print 10^15 as 1e+15).
    _CLAIM = """
    local stored = redis.call('GET', KEYS[1])
    if stored then return stored end
    if redis.call('GET', KEYS[2]) ~= ARGV[3] then return false end
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
    redis.call('SET', KEYS[2], ARGV[4])
    return ARGV[1]
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "payments:"):
        self._redis = redis
        self._prefix = f"{prefix}psp:"
        self._claim = redis.register_script(self._CLAIM)

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._prefix + key)
        return json.loads(raw) if raw is not None else None

    def _ttl(self, key: str) -> int | None:
        return None if key.startswith("auth:") else self.TTL_S

    async def add(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        name = self._prefix + key
        if await self._redis.set(name, json.dumps(record), nx=True, ex=self._ttl(key)):
            return record
        raw = await self._redis.get(name)
        return json.loads(raw) if raw is not None else record

    async def claim(
        self,
        key: str,
        record: dict[str, Any],
        auth_key: str,
        seen: dict[str, Any],
        moved: dict[str, Any],
    ) -> dict[str, Any] | None:
        # `seen` came from json.loads of what json.dumps wrote: dumping it again
        # gives back the stored text.
        args = [json.dumps(record), str(self.TTL_S), json.dumps(seen), json.dumps(moved)]
        stored = await self._claim(keys=[self._prefix + key, self._prefix + auth_key], args=args)
        return json.loads(stored) if stored is not None else None

    async def incr(self, key: str) -> int:
        name = self._prefix + key
        count = int(await self._redis.incr(name))
        if count == 1:
            await self._redis.expire(name, self.TTL_S)
        return count


def _reference(kind: str, key: str) -> str:
    return f"sim_{kind}_{hashlib.sha256(key.encode()).hexdigest()[:20]}"


class SimulatedPsp:
    """The PaymentServiceProvider of local runs and tests (see the module docstring)."""

    def __init__(self, store: SimStore, *, slow_delay_s: float = 15.0, flaky_failures: int = 2):
        self.store = store
        self.slow_delay_s = slow_delay_s
        self.flaky_failures = flaky_failures

    def card(self, token: str) -> Card:
        return behaviour_of(token)[1]

    async def _maybe_fail(self, behaviour: Behaviour, key: str) -> None:
        if behaviour is Behaviour.FLAKY:
            if await self.store.incr(f"flaky:{key}") <= self.flaky_failures:
                raise PspTransientError("simulated PSP: processor temporarily unavailable")

    async def authorize(
        self, *, key: str, card_token: str, amount_minor: int, currency: str
    ) -> AuthorizationOutcome:
        behaviour, _card = behaviour_of(card_token)
        record = await self.store.get(f"auth:{key}")
        if record is None:
            await self._maybe_fail(behaviour, key)
            record = await self.store.add(
                f"auth:{key}", self._decide(behaviour, key, amount_minor, currency)
            )
        if behaviour is Behaviour.SLOW:
            # The authorization exists at the PSP; only its answer is late.
            await asyncio.sleep(self.slow_delay_s)
        return _outcome(record)

    @staticmethod
    def _decide(behaviour: Behaviour, key: str, amount_minor: int, currency: str) -> dict[str, Any]:
        base = {"amount_minor": amount_minor, "currency": currency, "behaviour": str(behaviour)}
        if behaviour is Behaviour.INSUFFICIENT_FUNDS:
            return {**base, "state": "declined", "reason": "insufficient_funds"}
        if behaviour is Behaviour.EXPIRED:
            return {**base, "state": "declined", "reason": "card_expired"}
        if behaviour is Behaviour.REQUIRES_ACTION:
            url = f"https://psp.invalid/3ds/{_reference('act', key)}"
            return {**base, "state": "requires_action", "next_action_url": url}
        return {
            **base,
            "state": "authorized",
            "reference": _reference("auth", key),
            "captured_minor": 0,
            "refunded_minor": 0,
            "voided": False,
        }

    async def _authorization(self, authorization_key: str) -> dict[str, Any]:
        record = await self.store.get(f"auth:{authorization_key}")
        if record is None or record["state"] != "authorized":
            raise PspRejected("no such authorization")
        return record

    async def capture(
        self, *, key: str, authorization_key: str, amount_minor: int, currency: str
    ) -> Receipt:
        request = _request("capture", authorization_key, amount_minor, currency)
        done = await self.store.get(f"op:{key}")
        if done is not None:
            return _replayed(done, request)
        auth = await self._authorization(authorization_key)
        await self._maybe_fail(Behaviour(auth["behaviour"]), key)

        def captured(auth: dict[str, Any]) -> dict[str, Any]:
            open_minor = auth["amount_minor"] - auth["captured_minor"]
            if auth["voided"] or amount_minor > open_minor or currency != auth["currency"]:
                raise PspRejected("capture exceeds the open authorization")
            return {**auth, "captured_minor": auth["captured_minor"] + amount_minor}

        return await self._move(key, "cap", request, authorization_key, auth, captured)

    async def refund(
        self, *, key: str, authorization_key: str, amount_minor: int, currency: str
    ) -> Receipt:
        request = _request("refund", authorization_key, amount_minor, currency)
        done = await self.store.get(f"op:{key}")
        if done is not None:
            return _replayed(done, request)
        auth = await self._authorization(authorization_key)
        await self._maybe_fail(Behaviour(auth["behaviour"]), key)

        def refunded(auth: dict[str, Any]) -> dict[str, Any]:
            if amount_minor > auth["captured_minor"] - auth["refunded_minor"]:
                raise PspRejected("refund exceeds the captured amount")
            if currency != auth["currency"]:
                raise PspRejected("currency differs from the authorization's")
            return {**auth, "refunded_minor": auth["refunded_minor"] + amount_minor}

        return await self._move(key, "ref", request, authorization_key, auth, refunded)

    async def void(self, *, key: str, authorization_key: str) -> Receipt:
        request = _request("void", authorization_key)
        done = await self.store.get(f"op:{key}")
        if done is not None:
            return _replayed(done, request)
        # An authorization that has not happened yet is cancelled in advance:
        # a late authorize with that key then finds this record instead.
        cancelled = {"state": "cancelled", "behaviour": str(Behaviour.OK)}
        auth = await self.store.add(f"auth:{authorization_key}", cancelled)
        await self._maybe_fail(Behaviour(auth.get("behaviour", "ok")), key)
        return await self._move(
            key, "void", request, authorization_key, auth, _voided, released=_open_minor
        )

    async def _move(
        self,
        key: str,
        kind: str,
        request: dict[str, Any],
        authorization_key: str,
        auth: dict[str, Any],
        moved: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        released: Callable[[dict[str, Any]], int] | None = None,
    ) -> Receipt:
        """Record operation `key` and move the authorization to `moved(auth)` in one
        atomic step (`SimStore.claim`), so a crash between the two cannot leave a
        replayable receipt for money that never moved. Another operation on the
        authorization in between makes the step retry on what it left (`moved` may
        then refuse: two captures cannot both take the last of an authorization).
        `released`: what the step releases of `auth`, kept in the receipt (a void's)."""
        while True:
            record: dict[str, Any] = {"reference": _reference(kind, key), "request": request}
            if released is not None:
                record["released_minor"] = released(auth)
            try:
                after = moved(auth)
            except PspRejected:
                # A concurrent call with this very key may be what used the amount up.
                done = await self.store.get(f"op:{key}")
                if done is None:
                    raise
                return _replayed(done, request)
            stored = await self.store.claim(
                f"op:{key}", record, f"auth:{authorization_key}", auth, after
            )
            if stored is not None:
                return _replayed(stored, request)
            auth = await self._current(authorization_key)

    async def _current(self, authorization_key: str) -> dict[str, Any]:
        record = await self.store.get(f"auth:{authorization_key}")
        if record is None:
            raise PspRejected("no such authorization")
        return record


def _voided(auth: dict[str, Any]) -> dict[str, Any]:
    return {**auth, "voided": True} if auth["state"] == "authorized" else auth


def _open_minor(auth: dict[str, Any]) -> int:
    """What a void of `auth` releases: what is neither captured nor released before."""
    if auth["state"] != "authorized" or auth["voided"]:
        return 0
    return int(auth["amount_minor"] - auth["captured_minor"])


def _request(
    operation: str, authorization_key: str, amount_minor: int = 0, currency: str = ""
) -> dict[str, Any]:
    """What an operation's key stands for: its replay must ask the same."""
    return {
        "operation": operation,
        "authorization": authorization_key,
        "amount_minor": amount_minor,
        "currency": currency,
    }


def _replayed(record: dict[str, Any], request: dict[str, Any]) -> Receipt:
    """The first call's receipt, for the same request only. Records written before
    requests were kept hold none, and answer as they did."""
    if record.get("request", request) != request:
        raise PspKeyReused("this operation key was used for another request")
    return Receipt(record["reference"], record.get("released_minor"))


def _outcome(record: dict[str, Any]) -> AuthorizationOutcome:
    state = record["state"]
    if state == "authorized":
        return Authorized(record["reference"])
    if state == "declined":
        return Declined(record["reason"], f"simulated PSP: {record['reason'].replace('_', ' ')}")
    if state == "requires_action":
        return ActionRequired(record["next_action_url"])
    raise PspRejected("the authorization was cancelled")
