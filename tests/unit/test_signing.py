"""The request-signing scheme shared by the gateway and its clients (agora/signing.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from agora import signing


def test_canonical_string_has_the_documented_shape() -> None:
    canonical = signing.canonical_string(
        "get",
        "/v1/admin/api-clients",
        [("b", "2"), ("a", "x y"), ("a", "1")],
        b"{}",
        "1700000000",
        "n" * 16,
    )
    assert canonical.split("\n") == [
        "GET",
        "/v1/admin/api-clients",
        "a=1&a=x%20y&b=2",
        hashlib.sha256(b"{}").hexdigest(),
        "1700000000",
        "n" * 16,
    ]


def test_query_encoding_keeps_unreserved_and_escapes_the_rest() -> None:
    assert signing.canonical_query([("k~._-", "a/b&c=d+é")]) == "k~._-=a%2Fb%26c%3Dd%2B%C3%A9"
    assert signing.canonical_query([]) == ""


def test_signature_is_hmac_sha256_hex_with_a_version_prefix() -> None:
    expected = hmac.new(b"secret", b"text", hashlib.sha256).hexdigest()
    assert signing.signature("secret", "text") == f"v1={expected}"


def test_signed_headers_verify_and_any_change_breaks_them() -> None:
    headers = signing.sign_headers("s3cret", "POST", "/v1/x", [("q", "1")], b'{"a":1}')
    ts, nonce, sig = signing.check_headers(headers)
    assert signing.verify("s3cret", "POST", "/v1/x", [("q", "1")], b'{"a":1}', ts, nonce, sig)
    changed = [
        ("other", "POST", "/v1/x", [("q", "1")], b'{"a":1}'),
        ("s3cret", "PUT", "/v1/x", [("q", "1")], b'{"a":1}'),
        ("s3cret", "POST", "/v1/y", [("q", "1")], b'{"a":1}'),
        ("s3cret", "POST", "/v1/x", [("q", "2")], b'{"a":1}'),
        ("s3cret", "POST", "/v1/x", [("q", "1")], b'{"a":2}'),
    ]
    for secret, method, path, query, body in changed:
        assert not signing.verify(secret, method, path, query, body, ts, nonce, sig)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "signature-required"),
        ({"X-Agora-Timestamp": "1000", "X-Agora-Nonce": "n" * 16}, "signature-required"),
        (
            {"X-Agora-Timestamp": "soon", "X-Agora-Nonce": "n" * 16, "X-Agora-Signature": "v1=a"},
            "signature-invalid",
        ),
        (
            {"X-Agora-Timestamp": "1000", "X-Agora-Nonce": "n" * 16, "X-Agora-Signature": "v1=a"},
            "signature-stale",
        ),
        (
            {"X-Agora-Timestamp": "2000", "X-Agora-Nonce": "short", "X-Agora-Signature": "v1=a"},
            "signature-invalid",
        ),
        (
            {"X-Agora-Timestamp": "2000", "X-Agora-Nonce": "n" * 65, "X-Agora-Signature": "v1=a"},
            "signature-invalid",
        ),
        (
            {"X-Agora-Timestamp": "2000", "X-Agora-Nonce": "n n" * 8, "X-Agora-Signature": "v1=a"},
            "signature-invalid",
        ),
        (
            {"X-Agora-Timestamp": "2000", "X-Agora-Nonce": "n" * 16, "X-Agora-Signature": "v2=a"},
            "signature-invalid",
        ),
    ],
)
def test_header_checks(headers: dict[str, str], code: str) -> None:
    with pytest.raises(signing.SignatureError) as raised:
        signing.check_headers(headers, now=2000)
    assert raised.value.code == code


def _stamped(ts: int) -> dict[str, str]:
    return {
        "X-Agora-Timestamp": str(ts),
        "X-Agora-Nonce": "n" * 16,
        "X-Agora-Signature": "v1=" + "0" * 64,
    }


def test_timestamp_window_is_five_minutes_each_way() -> None:
    # The limits as documented (docs/gateway.md: ±300 s), not as the module says.
    for ts in (1700, 2300):
        assert signing.check_headers(_stamped(ts), now=2000)[0] == str(ts)
    for ts in (1699, 2301):  # a second beyond, in the past or in the future
        with pytest.raises(signing.SignatureError) as raised:
            signing.check_headers(_stamped(ts), now=2000)
        assert raised.value.code == "signature-stale"
