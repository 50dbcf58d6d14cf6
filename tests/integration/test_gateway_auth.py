"""The gateway authenticates every protected request locally, and refuses bad tokens early.

Each refusal has its own status and problem type, and none reaches a service:
the gateway's upstream-call tally does not move.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from joserfc import jwt
from joserfc.jwk import OKPKey

from agora.config import Settings
from gateway.deps import Gateway
from tests.integration.gatewaykit import (
    PASSWORD,
    PROBLEM,
    Api,
    TokenMinter,
    b64json,
    b64url,
    bearer,
    no_upstream_call,
    problem,
)

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]


# Happy paths ----------------------------------------------------------------


async def test_register_sign_in_and_read_me(api: Api) -> None:
    account = await api.register()
    tokens = await api.sign_in(account["email"])
    assert tokens["token_type"] == "Bearer"
    assert 0 < tokens["expires_in"] <= 900
    assert tokens["refresh_token"]

    response = await api.client.get("/v1/me", headers=bearer(tokens["access_token"]))
    assert response.status == 200, await response.text()
    me = await response.json()
    assert me["subject"] == account["account_id"]
    assert me["principal_type"] == "account"
    assert me["account"]["email"] == account["email"]
    assert "profile" in me["scopes"]
    timing = response.headers["Server-Timing"]
    for stage in ("auth", "ratelimit", "upstream"):
        assert f"{stage};dur=" in timing
    assert int(response.headers["RateLimit-Remaining"]) >= 0
    assert response.headers["X-Request-Id"]


async def test_registering_a_taken_email_is_a_conflict(api: Api) -> None:
    account = await api.register()
    response = await api.client.post(
        "/v1/accounts",
        json={"email": account["email"], "password": "another password!", "display_name": "X"},
    )
    await problem(response, 409, "email-taken")


async def test_an_email_signs_in_however_its_unicode_is_written(api: Api) -> None:
    # Registered decomposed (E + combining acute) with a Greek capital sigma before "@"
    # (Python lowercases it to a final sigma, PostgreSQL does not), signed in composed:
    # one normalization (agora/emails.py) on both paths.
    host = f"{uuid.uuid4().hex[:10]}.example.fr"
    response = await api.client.post(
        "/v1/accounts",
        json={"email": f"E\u0301COLE-ΟΔΟΣ@{host}", "password": PASSWORD, "display_name": "É"},
    )
    assert response.status == 201, await response.text()
    account = await response.json()
    assert account["email"] == f"\u00e9cole-\u03bf\u03b4\u03bf\u03c2@{host}"
    for typed in (f"\u00c9COLE-ΟΔΟΣ@{host}", account["email"], f"E\u0301cole-ΟΔΟΣ@{host}"):
        tokens = await api.sign_in(typed)
        me = await api.client.get("/v1/me", headers=bearer(tokens["access_token"]))
        assert (await me.json())["subject"] == account["account_id"]


async def test_wrong_password_is_refused(api: Api) -> None:
    account = await api.register()
    response = await api.client.post(
        "/v1/auth/signin", json={"email": account["email"], "password": "not the password"}
    )
    await problem(response, 401, "invalid-credentials")


def not_stored(response: Any) -> tuple[str | None, str | None]:
    return response.headers.get("Cache-Control"), response.headers.get("Pragma")


async def test_answers_with_credentials_are_never_stored_by_a_cache(api: Api) -> None:
    # RFC 6749 §5.1: a token answer says Cache-Control: no-store, and so does its
    # refusal, whichever stage made it; a read does not.
    account = await api.register()
    signed_in = await api.client.post(
        "/v1/auth/signin", json={"email": account["email"], "password": PASSWORD}
    )
    assert signed_in.status == 200, await signed_in.text()
    refreshed = await api.client.post(
        "/v1/auth/refresh", json={"refresh_token": (await signed_in.json())["refresh_token"]}
    )
    assert refreshed.status == 200, await refreshed.text()
    refused = await api.client.post(
        "/v1/auth/signin", json={"email": account["email"], "password": "not the password"}
    )
    malformed = await api.client.post("/v1/auth/token", json={"client_id": 1})
    for response in (signed_in, refreshed, refused, malformed):
        assert not_stored(response) == ("no-store", "no-cache"), response.url
    me = await api.client.get("/v1/me", headers=bearer((await refreshed.json())["access_token"]))
    assert me.status == 200
    assert me.headers.get("Pragma") is None


async def test_refresh_rotates_the_refresh_token(api: Api) -> None:
    session = await api.new_session()
    response = await api.client.post(
        "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert response.status == 200, await response.text()
    rotated = await response.json()
    assert rotated["refresh_token"] != session["refresh_token"]
    me = await api.client.get("/v1/me", headers=bearer(rotated["access_token"]))
    assert me.status == 200


async def test_sign_out_revokes_the_session(gw: Gateway, api: Api) -> None:
    session = await api.new_session()
    response = await api.client.post("/v1/auth/signout", headers=bearer(session["access_token"]))
    assert response.status == 204, await response.text()
    with no_upstream_call(gw):
        response = await api.client.get("/v1/me", headers=bearer(session["access_token"]))
        await problem(response, 401, "token-revoked")
    refreshed = await api.client.post(
        "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    await problem(refreshed, 401, "invalid-credentials")


async def test_reused_refresh_token_revokes_the_whole_session(gw: Gateway, api: Api) -> None:
    session = await api.new_session()
    first = await api.client.post(
        "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert first.status == 200
    rotated = await first.json()
    # The client got its answer and used it: the first token presented again is a copy.
    later = await api.client.post(
        "/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}
    )
    assert later.status == 200
    rotated = await later.json()
    reused = await api.client.post(
        "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    await problem(reused, 401, "invalid-credentials")
    # The family is revoked: the token minted by the legitimate refresh dies too.
    with no_upstream_call(gw):
        response = await api.client.get("/v1/me", headers=bearer(rotated["access_token"]))
        await problem(response, 401, "token-revoked")


async def test_jwks_is_served_from_the_gateway(api: Api, minter: TokenMinter) -> None:
    response = await api.client.get("/.well-known/jwks.json")
    assert response.status == 200
    keys = (await response.json())["keys"]
    assert keys and all(k["kty"] == "OKP" and k["crv"] == "Ed25519" for k in keys)
    assert all("d" not in k for k in keys)


# Refusals that reach no service -----------------------------------------------


async def test_missing_token(gw: Gateway, api: Api) -> None:
    with no_upstream_call(gw):
        response = await api.client.get("/v1/me")
        await problem(response, 401, "token-missing")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "....", "x" * 5000])
async def test_malformed_token(gw: Gateway, api: Api, token: str) -> None:
    with no_upstream_call(gw):
        response = await api.client.get("/v1/me", headers=bearer(token))
        await problem(response, 401, "token-malformed")


async def test_alg_none_is_rejected(gw: Gateway, api: Api, minter: TokenMinter) -> None:
    token = f"{b64json({'alg': 'none', 'kid': minter.kid})}.{b64json(minter.claims())}."
    with no_upstream_call(gw):
        response = await api.client.get("/v1/me", headers=bearer(token))
        await problem(response, 401, "token-algorithm-rejected")


async def test_hs256_signed_with_the_public_key_is_rejected(
    gw: Gateway, api: Api, minter: TokenMinter
) -> None:
    # The classic key-confusion attack: HMAC keyed with the (public) verification key.
    signing_input = f"{b64json({'alg': 'HS256', 'kid': minter.kid})}.{b64json(minter.claims())}"
    for secret in (minter.public_jwk()["x"].encode(), str(minter.public_jwk()).encode()):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        with no_upstream_call(gw):
            response = await api.client.get(
                "/v1/me", headers=bearer(f"{signing_input}.{b64url(mac)}")
            )
            await problem(response, 401, "token-algorithm-rejected")


async def test_unknown_kid_is_rejected_with_one_floored_refetch(
    gw: Gateway, api: Api, minter: TokenMinter
) -> None:
    stranger = OKPKey.generate_key("Ed25519")
    fetches = gw.jwks.fetches
    for _ in range(5):
        kid = f"unknown-{uuid.uuid4().hex[:8]}"
        token = jwt.encode(
            {"alg": "EdDSA", "kid": kid}, minter.claims(), stranger, algorithms=["EdDSA"]
        )
        with no_upstream_call(gw):
            response = await api.client.get("/v1/me", headers=bearer(token))
            await problem(response, 401, "token-key-unknown")
    # Five unknown kids in a row cost identity at most one JWKS fetch (the floor).
    assert gw.jwks.fetches - fetches <= 1


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp": -120}, "token-expired"),
        ({"nbf": +600}, "token-not-yet-valid"),
        ({"aud": "another-api"}, "token-audience-invalid"),
        ({"iss": "someone-else"}, "token-issuer-invalid"),
        ({"jti": None}, "token-claims-invalid"),
        ({"ptype": "robot"}, "token-claims-invalid"),
    ],
    ids=["expired", "not-yet-valid", "wrong-audience", "wrong-issuer", "no-jti", "bad-ptype"],
)
async def test_bad_claims_are_rejected(
    gw: Gateway, api: Api, minter: TokenMinter, claims: dict[str, object], code: str
) -> None:
    # Time claims are given relative to now (parameters are built at collection time).
    now = int(time.time())
    claims = {
        k: now + v if k in ("exp", "nbf") and isinstance(v, int) else v for k, v in claims.items()
    }
    with no_upstream_call(gw):
        response = await api.client.get("/v1/me", headers=bearer(minter.token(**claims)))
        await problem(response, 401, code)


async def test_expiry_has_a_small_leeway(gw: Gateway, api: Api, minter: TokenMinter) -> None:
    # 10 s past exp is inside the 30 s leeway for clock skew: accepted (and the api_client
    # ptype answers from its token alone, so this needs no account).
    token = minter.token(exp=int(time.time()) - 10, ptype="api_client", scope="profile")
    response = await api.client.get("/v1/me", headers=bearer(token))
    await problem(response, 401, "signature-required")  # past auth: the signing stage


async def test_tampered_payload_is_rejected(gw: Gateway, api: Api) -> None:
    session = await api.new_session()
    header, payload, signature = session["access_token"].split(".")
    claims = json.loads(b64url_decode(payload))
    claims["scope"] += " admin identity:admin"
    tampered = f"{header}.{b64json(claims)}.{signature}"
    with no_upstream_call(gw):
        response = await api.client.get("/v1/admin/api-clients", headers=bearer(tampered))
        await problem(response, 401, "token-signature-invalid")


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


async def test_revoked_token_is_rejected(
    settings: Settings, gw: Gateway, api: Api, minter: TokenMinter
) -> None:
    token = minter.token(scope="profile")
    claims = minter.claims()  # fresh jti for a second check below
    revoked_jti = jwt.decode(token, minter.key, algorithms=["EdDSA"]).claims["jti"]
    redis = aioredis.from_url(settings.redis_url)
    try:
        # What identity writes on revocation (tests play identity here).
        await redis.set(f"identity:revoked:jti:{revoked_jti}", "1", ex=60)
        with no_upstream_call(gw):
            response = await api.client.get("/v1/me", headers=bearer(token))
            await problem(response, 401, "token-revoked")
        await redis.set(f"identity:revoked:sid:{claims['sid']}", "1", ex=60)
        with no_upstream_call(gw):
            response = await api.client.get(
                "/v1/me", headers=bearer(minter.token(sid=claims["sid"], scope="profile"))
            )
            await problem(response, 401, "token-revoked")
    finally:
        await redis.aclose()


async def test_missing_scope_is_forbidden(gw: Gateway, api: Api) -> None:
    session = await api.new_session()  # a customer: no identity:admin
    with no_upstream_call(gw):
        response = await api.client.get(
            "/v1/admin/api-clients", headers=bearer(session["access_token"])
        )
        body = await problem(response, 403, "insufficient-scope")
    assert "identity:admin" in body["detail"]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


async def test_every_error_is_problem_json(api: Api) -> None:
    response = await api.client.get("/v1/nowhere")
    body = await problem(response, 404, "route-not-found")
    assert body["instance"] == "/v1/nowhere"
    response = await api.client.put("/v1/me")
    await problem(response, 405, "method-not-allowed")
    assert PROBLEM.startswith("https://")


async def test_refused_tokens_are_charged_to_the_sender_s_address(gw: Gateway, api: Api) -> None:
    # Refused before admission, a flood of made-up tokens (each a signature check) was
    # never rate limited: each now costs a request of the address's bucket.
    bucket = "gateway:rl:read:ip:127.0.0.1"  # /v1/me's route class, the test client's
    full_for_an_hour = (time.time() + 3600) * 1_000_000
    await gw.redis.set(bucket, int(full_for_an_hour), ex=3600)
    try:
        with no_upstream_call(gw):
            response = await api.client.get("/v1/me", headers=bearer("not.a.jwt"))
            await problem(response, 429, "rate-limited")
            assert response.headers["Retry-After"]
    finally:
        await gw.redis.delete(bucket)
    response = await api.client.get("/v1/me", headers=bearer("not.a.jwt"))
    await problem(response, 401, "token-malformed")


async def test_revoked_tokens_are_charged_to_the_sender_s_address(
    settings: Settings, gw: Gateway, api: Api, minter: TokenMinter
) -> None:
    # Revocation is checked before any bucket: anyone holds a revoked token after a
    # sign-out, and could send it without limit.
    token = minter.token(scope="profile")
    jti = jwt.decode(token, minter.key, algorithms=["EdDSA"]).claims["jti"]
    bucket = "gateway:rl:read:ip:127.0.0.1"
    full_for_an_hour = (time.time() + 3600) * 1_000_000
    await gw.redis.set(f"identity:revoked:jti:{jti}", "1", ex=60)
    await gw.redis.set(bucket, int(full_for_an_hour), ex=3600)
    try:
        with no_upstream_call(gw):
            response = await api.client.get("/v1/me", headers=bearer(token))
            await problem(response, 429, "rate-limited")
    finally:
        await gw.redis.delete(bucket)
    response = await api.client.get("/v1/me", headers=bearer(token))
    await problem(response, 401, "token-revoked")
