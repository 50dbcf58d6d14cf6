"""Access-token claims, signing and verification (no infrastructure)."""

from __future__ import annotations

import datetime as dt
import warnings

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey

from workers.identity.errors import InvalidToken
from workers.identity.keys import public_jwk
from workers.identity.tokens import Principal, TokenPolicy, build_claims, issue, verify

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

POLICY = TokenPolicy(issuer="agora-identity", audience="agora-api", ttl_s=900)
ALICE = Principal("acct-1", "account", ("profile", "orders:read"), "sid-1")


def key(kid: str = "k1") -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid})


def public(k: OKPKey) -> KeySet:
    return KeySet([OKPKey.import_key(public_jwk(str(k.kid), str(k.as_dict()["x"])))])


def test_claims_carry_the_contract() -> None:
    claims = build_claims(ALICE, POLICY, now=1_000, jti="j-1")
    assert claims == {
        "iss": "agora-identity",
        "aud": "agora-api",
        "sub": "acct-1",
        "iat": 1_000,
        "nbf": 1_000,
        "exp": 1_900,
        "jti": "j-1",
        "scope": "orders:read profile",
        "ptype": "account",
        "sid": "sid-1",
    }


def test_issued_token_has_eddsa_header_with_kid_and_verifies() -> None:
    k = key()
    issued = issue(ALICE, POLICY, k)
    decoded = jwt.decode(issued.token, public(k), algorithms=["EdDSA"])
    assert decoded.header == {"alg": "EdDSA", "kid": "k1", "typ": "JWT"}
    verified = verify(issued.token, public(k), POLICY)
    assert verified.principal == Principal("acct-1", "account", ("orders:read", "profile"), "sid-1")
    assert verified.jti == issued.jti and verified.kid == "k1"
    assert verified.expires_at == issued.expires_at


def test_a_token_from_another_key_is_rejected() -> None:
    issued = issue(ALICE, POLICY, key("k1"))
    with pytest.raises(InvalidToken):
        verify(issued.token, public(key("k1")), POLICY)


def test_wrong_audience_or_issuer_is_rejected() -> None:
    k = key()
    issued = issue(ALICE, POLICY, k)
    with pytest.raises(InvalidToken):
        verify(issued.token, public(k), TokenPolicy("agora-identity", "other-api", 900))
    with pytest.raises(InvalidToken):
        verify(issued.token, public(k), TokenPolicy("someone-else", "agora-api", 900))


def test_expiry_is_enforced_after_the_leeway() -> None:
    k = key()
    issued = issue(ALICE, POLICY, k)
    exp = int(issued.expires_at.timestamp())
    verify(issued.token, public(k), POLICY, now=exp + 30)  # inside the 60 s leeway
    with pytest.raises(InvalidToken):
        verify(issued.token, public(k), POLICY, now=exp + 61)


def test_alg_none_is_rejected() -> None:
    claims = build_claims(ALICE, POLICY, now=int(dt.datetime.now(dt.UTC).timestamp()), jti="j")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unsigned = jwt.encode({"alg": "none"}, claims, None, algorithms=["none"])
    with pytest.raises(InvalidToken):
        verify(unsigned, public(key()), POLICY)
