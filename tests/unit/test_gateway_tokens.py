"""Token policy: only EdDSA from known keys, claims checked, unknown kids refetched at a floor."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey

from gateway.jwks import JwksCache
from gateway.problems import Problem
from gateway.tokens import TokenVerifier

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

KEY = OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": "agora-identity", "aud": "agora-api", "sub": "s", "exp": now + 900, "iat": now,
        "nbf": now, "jti": "j", "scope": "profile orders:read", "ptype": "account", "sid": "f",
    }  # fmt: skip
    base.update(overrides)
    return base


def token(key: OKPKey = KEY, kid: str = "k1", **overrides: Any) -> str:
    return jwt.encode({"alg": "EdDSA", "kid": kid}, claims(**overrides), key, algorithms=["EdDSA"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(
    keys: list[dict[str, Any]], clock: Clock | None = None
) -> tuple[TokenVerifier, JwksCache]:
    async def fetch() -> list[dict[str, Any]]:
        return keys

    cache = JwksCache(fetch, clock=clock or Clock())
    return TokenVerifier(cache, issuer="agora-identity", audience="agora-api"), cache


async def test_valid_token_gives_the_principal() -> None:
    check, _ = verifier([{**KEY.as_dict(private=False), "kid": "k1"}])
    principal = await check.verify(token())
    assert principal.subject == "s" and principal.scopes == {"profile", "orders:read"}
    assert principal.ptype == "account" and principal.sid == "f" and principal.kid == "k1"


async def test_private_or_foreign_keys_in_the_jwks_are_ignored() -> None:
    check, cache = verifier(
        [KEY.as_dict(private=True) | {"kid": "k1"}, {"kty": "EC", "kid": "k2", "crv": "P-256"}]
    )
    await cache.refresh()
    assert cache.get("k1") is None and cache.document() == {"keys": []}
    with pytest.raises(Problem) as raised:
        await check.verify(token())
    assert raised.value.code == "token-key-unknown"


async def test_an_unknown_kid_while_the_key_set_cannot_be_fetched_is_503_not_401() -> None:
    # Identity unreachable past a rotation: the new key's tokens are good; a 401 would
    # make clients throw them away while sign-in itself answers 503.
    answers: list[Any] = [ConnectionError("identity unreachable"), KEY.as_dict() | {"kid": "k1"}]

    async def fetch() -> list[dict[str, Any]]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return [{k: v for k, v in answer.items() if k != "d"}]

    clock = Clock()
    cache = JwksCache(fetch, clock=clock)
    check = TokenVerifier(cache, issuer="agora-identity", audience="agora-api")
    with pytest.raises(Problem) as raised:
        await check.verify(token())
    assert (raised.value.status, raised.value.code) == (503, "dependency-unavailable")
    assert raised.value.headers == {"Retry-After": "5"}
    clock.now += 10  # past the floor: identity answers again
    assert (await check.verify(token())).subject == "s"


async def test_unknown_kid_refetches_at_most_once_per_floor() -> None:
    clock = Clock()
    keys: list[dict[str, Any]] = []
    check, cache = verifier(keys, clock)
    await cache.refresh()
    assert cache.fetches == 1
    for _ in range(3):
        with pytest.raises(Problem):
            await check.verify(token())
    assert cache.fetches == 1  # within the floor: no refetch
    clock.now += 6
    keys.append({**KEY.as_dict(private=False), "kid": "k1"})  # identity rotated meanwhile
    assert (await check.verify(token())).subject == "s"
    assert cache.fetches == 2


async def test_a_periodic_refresh_just_before_a_rotation_does_not_hold_back_the_new_key() -> None:
    clock = Clock()
    keys: list[dict[str, Any]] = []
    check, cache = verifier(keys, clock)
    await cache.refresh(force=True)  # the 60 s refresh
    clock.now += 0.5
    keys.append({**KEY.as_dict(private=False), "kid": "k1"})  # identity rotates
    clock.now += 0.5
    assert (await check.verify(token())).subject == "s"  # fetched for the unknown kid
    assert cache.fetches == 2


@pytest.mark.parametrize("broken", [{"x": "AAAA"}, {"x": "!!!"}, {"x": None}, {"kid": ["k"]}])
async def test_a_key_that_cannot_be_imported_is_skipped_not_fatal_to_the_others(
    broken: dict[str, Any],
) -> None:
    other = OKPKey.generate_key("Ed25519", parameters={"kid": "k0"}).as_dict(private=False)
    clock = Clock()
    check, cache = verifier([other | {"kid": "k0"} | broken, KEY.as_dict(private=False)], clock)
    assert await cache.refresh()
    assert [jwk["kid"] for jwk in cache.document()["keys"]] == ["k1"]
    assert (await check.verify(token())).subject == "s"
    clock.now += 10  # past the floor: an unknown kid refetches the same set
    with pytest.raises(Problem) as raised:
        await check.verify(token(kid="k9"))
    assert raised.value.code == "token-key-unknown"


async def test_the_periodic_refresh_outlives_a_round_that_fails() -> None:
    answers: list[list[Any]] = [[None], [KEY.as_dict(private=False)]]  # garbage, then a key

    async def fetch() -> list[dict[str, Any]]:
        return answers.pop(0) if answers else [KEY.as_dict(private=False)]

    cache = JwksCache(fetch, clock=Clock())
    refreshing = asyncio.create_task(cache.run_periodic_refresh(interval_s=0))
    try:
        deadline = time.monotonic() + 5
        while cache.get("k1") is None:
            assert not refreshing.done(), "the periodic refresh stopped"
            assert time.monotonic() < deadline, "the key never loaded"
            await asyncio.sleep(0.01)
    finally:
        refreshing.cancel()


async def test_tokens_of_a_new_key_arriving_together_all_wait_for_the_one_fetch() -> None:
    # Identity rotated: four requests carry the new kid at once; one fetches, the
    # others must wait for it instead of refusing a valid token.
    fetched = asyncio.Event()
    keys: list[dict[str, Any]] = []

    async def slow_fetch() -> list[dict[str, Any]]:
        await fetched.wait()
        return keys

    cache = JwksCache(slow_fetch, clock=Clock())
    check = TokenVerifier(cache, issuer="agora-identity", audience="agora-api")
    verifying = [asyncio.create_task(check.verify(token())) for _ in range(4)]
    await asyncio.sleep(0.01)
    keys.append({**KEY.as_dict(private=False), "kid": "k1"})
    fetched.set()
    principals = await asyncio.gather(*verifying)
    assert [p.subject for p in principals] == ["s"] * 4
    assert cache.fetches == 1


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"exp": -31}, "token-expired"),
        ({"nbf": +31}, "token-not-yet-valid"),
        ({"iat": +600}, "token-not-yet-valid"),
        ({"aud": "x"}, "token-audience-invalid"),
        ({"iss": "x"}, "token-issuer-invalid"),
        ({"sid": ""}, "token-claims-invalid"),
        ({"scope": ["profile"]}, "token-claims-invalid"),
    ],
)
async def test_claim_failures(overrides: dict[str, Any], code: str) -> None:
    check, _ = verifier([{**KEY.as_dict(private=False), "kid": "k1"}])
    now = int(time.time())  # time claims are relative: parameters are built at collection
    overrides = {
        k: now + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v
        for k, v in overrides.items()
    }
    with pytest.raises(Problem) as raised:
        await check.verify(token(**overrides))
    assert raised.value.code == code


async def test_leeway_is_thirty_seconds() -> None:
    check, _ = verifier([{**KEY.as_dict(private=False), "kid": "k1"}])
    now = int(time.time())
    assert await check.verify(token(exp=now - 20, nbf=now + 20))
