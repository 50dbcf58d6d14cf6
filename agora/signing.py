"""Request signing for API clients: the canonical string and HMAC-SHA256 over it.

Shared by the gateway (which verifies) and by clients and tests (which sign), so
both sides build the exact same bytes. The scheme (docs/gateway.md):

    canonical = METHOD "\\n" PATH "\\n" QUERY "\\n" hex(SHA-256(body)) "\\n" TIMESTAMP "\\n" NONCE

QUERY is every query parameter, percent-encoded (RFC 3986 unreserved characters
kept), sorted by key then value and joined as k=v with "&". The signature header
is `v1=<hex HMAC-SHA256(secret, canonical)>`; the version prefix lets a later
scheme coexist with this one during a migration.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from urllib.parse import quote

TIMESTAMP_HEADER = "X-Agora-Timestamp"
NONCE_HEADER = "X-Agora-Nonce"
SIGNATURE_HEADER = "X-Agora-Signature"
SCHEME = "v1"
# A request older or newer than this (clock skew included) is refused.
MAX_SKEW_SECONDS = 300
NONCE_MIN_LENGTH = 16
NONCE_MAX_LENGTH = 64
# Nonces are remembered a little longer than the timestamp window is wide (twice the skew),
# so a replay inside the window always finds its nonce, even through a gateway whose
# clock is a minute behind the first one's.
NONCE_TTL_SECONDS = 2 * MAX_SKEW_SECONDS + 60
# Nonces become part of a Redis key: unreserved URL characters only.
_NONCE = re.compile(rf"[A-Za-z0-9._~-]{{{NONCE_MIN_LENGTH},{NONCE_MAX_LENGTH}}}")
# `v1=` and a hex HMAC-SHA256, as signature() writes it.
_SIGNATURE = re.compile(rf"{SCHEME}=[0-9a-f]{{64}}")


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Sorted, percent-encoded `k=v&k=v` (repeated keys keep every value)."""
    return "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in params))


def canonical_string(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    body: bytes,
    timestamp: str,
    nonce: str,
) -> str:
    return "\n".join(
        (
            method.upper(),
            path,
            canonical_query(query),
            hashlib.sha256(body).hexdigest(),
            timestamp,
            nonce,
        )
    )


def signature(secret: str | bytes, canonical: str) -> str:
    """The header value: `v1=<hex HMAC-SHA256>`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return f"{SCHEME}=" + hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign_headers(
    secret: str | bytes,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The three headers a client adds to a request (what an SDK would do)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = new_nonce() if nonce is None else nonce
    canonical = canonical_string(method, path, query, body, ts, nonce)
    return {
        TIMESTAMP_HEADER: ts,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signature(secret, canonical),
    }


class SignatureError(Exception):
    """Why a signed request is refused; `code` is the problem type's last segment."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check_headers(headers: Mapping[str, str], *, now: float | None = None) -> tuple[str, str, str]:
    """Validate presence and shape of the signing headers; returns (timestamp, nonce, signature).

    Cheap checks first, so a stale or malformed request never costs a secret lookup.
    """
    timestamp = headers.get(TIMESTAMP_HEADER)
    nonce = headers.get(NONCE_HEADER)
    sig = headers.get(SIGNATURE_HEADER)
    if not timestamp or not nonce or not sig:
        raise SignatureError(
            "signature-required",
            f"API clients must send {TIMESTAMP_HEADER}, {NONCE_HEADER} and {SIGNATURE_HEADER}",
        )
    # ASCII digits only, and few of them: str.isdigit() also accepts "²" or "٣", and
    # int() refuses some of those and any string of over 4300 digits (a 500, not a 401).
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise SignatureError("signature-invalid", f"{TIMESTAMP_HEADER} must be unix seconds")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > MAX_SKEW_SECONDS:
        raise SignatureError(
            "signature-stale",
            f"{TIMESTAMP_HEADER} is more than {MAX_SKEW_SECONDS} s from the server's clock",
        )
    if _NONCE.fullmatch(nonce) is None:
        raise SignatureError(
            "signature-invalid",
            f"{NONCE_HEADER} must be {NONCE_MIN_LENGTH}-{NONCE_MAX_LENGTH} characters"
            " from A-Z a-z 0-9 . _ ~ -",
        )
    # Exact shape before any comparison: anything else (non-ASCII included, which
    # aiohttp hands over as lone surrogates) could not be encoded for compare_digest.
    if _SIGNATURE.fullmatch(sig) is None:
        raise SignatureError(
            "signature-invalid", f"{SIGNATURE_HEADER} must be '{SCHEME}=<64 lowercase hex>'"
        )
    return timestamp, nonce, sig


def verify(
    secret: str | bytes,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    body: bytes,
    timestamp: str,
    nonce: str,
    presented: str,
) -> bool:
    """Constant-time comparison of the presented signature with the expected one."""
    expected = signature(secret, canonical_string(method, path, query, body, timestamp, nonce))
    return hmac.compare_digest(expected.encode(), presented.encode())
