"""Access tokens: the claims identity puts in them, signing, and full verification.

Claims (DESIGN §6 and the issue 4 decisions): iss, aud, sub, exp, iat, nbf,
jti, scope (space-separated), ptype ("account" | "api_client") and sid (the
session, i.e. refresh-token family, or the client id for client credentials).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey
from joserfc.jws import extract_compact

from workers.identity.errors import InvalidToken
from workers.identity.keys import ALG

PrincipalKind = Literal["account", "api_client"]
LEEWAY_S = 60  # clock skew tolerated on exp / nbf / iat


@dataclass(frozen=True)
class Principal:
    """Who a token is for and what it may do."""

    subject: str
    kind: PrincipalKind
    scopes: tuple[str, ...]
    sid: str


@dataclass(frozen=True)
class TokenPolicy:
    issuer: str
    audience: str
    ttl_s: int


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class VerifiedToken:
    principal: Principal
    jti: str
    kid: str
    issuer: str
    audience: str
    issued_at: dt.datetime
    expires_at: dt.datetime


def build_claims(
    principal: Principal, policy: TokenPolicy, *, now: int, jti: str
) -> dict[str, Any]:
    """The claim set of one access token (pure: `now` and `jti` are passed in)."""
    return {
        "iss": policy.issuer,
        "aud": policy.audience,
        "sub": principal.subject,
        "iat": now,
        "nbf": now,
        "exp": now + policy.ttl_s,
        "jti": jti,
        "scope": " ".join(sorted(principal.scopes)),
        "ptype": principal.kind,
        "sid": principal.sid,
    }


def issue(principal: Principal, policy: TokenPolicy, key: OKPKey) -> IssuedToken:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    jti = str(uuid.uuid4())
    claims = build_claims(principal, policy, now=now, jti=jti)
    header = {"alg": ALG, "kid": key.kid, "typ": "JWT"}
    token = jwt.encode(header, claims, key, algorithms=[ALG])
    return IssuedToken(token, jti, dt.datetime.fromtimestamp(claims["exp"], dt.UTC))


def unverified_kid(token: str) -> str | None:
    """The header's kid, read only to pick the key (the signature is checked after)."""
    try:
        kid = extract_compact(token.encode()).headers().get("kid")
    except (JoseError, ValueError):
        return None
    return str(kid) if kid else None


def verify(
    token: str, keys: KeySet, policy: TokenPolicy, *, now: int | None = None
) -> VerifiedToken:
    """Signature (EdDSA only, key by kid), issuer, audience, exp / nbf with leeway, claim shapes.

    Revocation is not checked here (it needs Redis): see Sessions.is_revoked.
    """
    try:
        decoded = jwt.decode(token, keys, algorithms=[ALG])
        registry = jwt.JWTClaimsRegistry(
            now=now,
            leeway=LEEWAY_S,
            iss={"essential": True, "value": policy.issuer},
            aud={"essential": True, "value": policy.audience},
            sub={"essential": True},
            exp={"essential": True},
            jti={"essential": True},
            sid={"essential": True},
        )
        registry.validate(decoded.claims)
    except (JoseError, ValueError) as exc:
        raise InvalidToken(f"token rejected: {exc}") from None
    claims = decoded.claims
    kind = claims.get("ptype")
    if kind not in ("account", "api_client"):
        raise InvalidToken("token rejected: bad ptype")
    return VerifiedToken(
        principal=Principal(
            subject=str(claims["sub"]),
            kind=kind,
            scopes=tuple(str(claims.get("scope", "")).split()),
            sid=str(claims["sid"]),
        ),
        jti=str(claims["jti"]),
        kid=str(decoded.header.get("kid", "")),
        issuer=str(claims["iss"]),
        audience=str(claims["aud"]),
        issued_at=dt.datetime.fromtimestamp(int(claims.get("iat", 0)), dt.UTC),
        expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
    )
