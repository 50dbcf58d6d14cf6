"""Access-token verification: joserfc does the JOSE work, this module the policy.

Policy: only EdDSA (Ed25519) signatures from identity's JWKS; `iss` and `aud`
must match the settings; `exp`, `nbf` and `iat` checked with a 30 s leeway for
clock skew; `sub`, `jti`, `sid` and `ptype` must be present. Everything else
(`alg: none`, HS256 "signed" with the public key, a foreign key) fails before
any claim is read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    SecurityWarning,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import GuestProtocol, OKPKey
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from gateway.jwks import JwksCache
from gateway.problems import Problem

# Identity signs with alg "EdDSA" (RFC 8037), which RFC 9864 deprecates in favour
# of the fully specified "Ed25519": the same signature over the same key type. Both
# are accepted; joserfc's per-call warning about the first is noise on the hot path.
ALGORITHMS = ("EdDSA", "Ed25519")
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

LEEWAY_S = 30
PRINCIPAL_TYPES = frozenset({"account", "api_client"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the verified token says."""

    subject: str
    ptype: str
    scopes: frozenset[str]
    jti: str
    sid: str
    expires_at: int
    kid: str

    @property
    def is_api_client(self) -> bool:
        return self.ptype == "api_client"


class _UnknownKid(Exception):
    def __init__(self, kid: str):
        super().__init__(kid)
        self.kid = kid


_CLAIM_PROBLEMS = {
    "aud": "token-audience-invalid",
    "iss": "token-issuer-invalid",
    "nbf": "token-not-yet-valid",
    "iat": "token-not-yet-valid",
}


class TokenVerifier:
    def __init__(self, jwks: JwksCache, *, issuer: str, audience: str, leeway_s: int = LEEWAY_S):
        self._jwks = jwks
        self._registry = JWSRegistry(algorithms=list(ALGORITHMS))
        self._claims = JWTClaimsRegistry(
            leeway=leeway_s,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
            jti={"essential": True},
        )

    def _key(self, guest: GuestProtocol) -> OKPKey:
        kid = guest.headers().get("kid")
        if not isinstance(kid, str) or not kid:
            raise Problem("token-malformed", "the token header has no kid")
        key = self._jwks.get(kid)
        if key is None:
            raise _UnknownKid(kid)
        return key

    def _decode(self, token: str) -> jwt.Token:
        try:
            return jwt.decode(token, self._key, algorithms=ALGORITHMS, registry=self._registry)
        except UnsupportedAlgorithmError:
            raise Problem(
                "token-algorithm-rejected", "only EdDSA (Ed25519) tokens are accepted"
            ) from None
        except BadSignatureError:
            raise Problem("token-signature-invalid") from None
        except JoseError as error:
            raise Problem("token-malformed", error.description or "") from None
        except (ValueError, TypeError, KeyError):
            # Bad base64 or JSON in a segment surfaces as a plain ValueError.
            raise Problem("token-malformed") from None

    async def verify(self, token: str) -> Principal:
        try:
            decoded = self._decode(token)
        except _UnknownKid as unknown:
            # Maybe a key minted since our last fetch; refetch (floored) and retry once.
            await self._jwks.refresh()
            if self._jwks.get(unknown.kid) is None:
                if self._jwks.failing:
                    raise Problem(
                        "dependency-unavailable",
                        "the token's signing key cannot be fetched now; retry shortly",
                        headers={"Retry-After": "5"},
                    ) from None
                raise Problem(
                    # Cut: the kid is the sender's, as long as a header may be.
                    "token-key-unknown",
                    f"no signing key with kid {unknown.kid[:64]!r}",
                ) from None
            decoded = self._decode(token)
        return self._principal(decoded)

    def _principal(self, decoded: jwt.Token) -> Principal:
        claims: dict[str, Any] = decoded.claims
        try:
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise Problem("token-expired") from None
        except InvalidClaimError as error:
            code = _CLAIM_PROBLEMS.get(error.claim, "token-claims-invalid")
            raise Problem(code, error.description or "") from None
        except ClaimError as error:  # missing or insecure claims
            raise Problem("token-claims-invalid", error.description or "") from None
        ptype, sid, scope = claims.get("ptype"), claims.get("sid"), claims.get("scope", "")
        if ptype not in PRINCIPAL_TYPES or not isinstance(sid, str) or not sid:
            raise Problem("token-claims-invalid", "ptype and sid claims are required")
        if not isinstance(scope, str):
            raise Problem("token-claims-invalid", "scope must be a space-separated string")
        return Principal(
            subject=claims["sub"],
            ptype=ptype,
            scopes=frozenset(scope.split()),
            jti=claims["jti"],
            sid=sid,
            expires_at=int(claims["exp"]),
            kid=decoded.header.get("kid", ""),
        )
