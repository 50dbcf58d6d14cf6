"""Properties of the canonical signing string (agora/signing.py).

The gateway and every client build these bytes independently, so the
canonicalization must be a function of the request's meaning only (query order
does not matter) and must change when any signed component changes (or a
tampered request would verify).
"""

from __future__ import annotations

import hashlib
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from agora import signing
from tests.fuzz.settings import PROPERTY

METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])
# A path as it is sent: percent-encoded, so only URL path characters occur.
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%"
PATHS = st.text(PATH_CHARS, min_size=0, max_size=40).map(lambda p: "/" + p)
# Query keys and values are decoded text: anything a client may send, Unicode included
# (lone surrogates cannot come out of a decoded URL, so they are excluded).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
QUERIES = st.lists(st.tuples(TEXT, TEXT), max_size=6)
BODIES = st.binary(max_size=256)
TIMESTAMPS = st.integers(min_value=0, max_value=10**10).map(str)
NONCES = st.text(
    string.ascii_letters + string.digits + "._~-",
    min_size=signing.NONCE_MIN_LENGTH,
    max_size=signing.NONCE_MAX_LENGTH,
)


@st.composite
def requests(draw: st.DrawFn) -> dict:
    return {
        "method": draw(METHODS),
        "path": draw(PATHS),
        "query": draw(QUERIES),
        "body": draw(BODIES),
        "timestamp": draw(TIMESTAMPS),
        "nonce": draw(NONCES),
    }


def canonical(request: dict) -> str:
    return signing.canonical_string(**request)


@PROPERTY
@given(requests(), st.randoms(use_true_random=False))
def test_query_order_does_not_change_the_canonical_string(request: dict, rnd) -> None:
    shuffled = list(request["query"])
    rnd.shuffle(shuffled)
    assert canonical(request) == canonical({**request, "query": shuffled})


@PROPERTY
@given(requests())
def test_the_canonical_string_has_six_lines_with_the_body_digest(request: dict) -> None:
    lines = canonical(request).split("\n")
    assert len(lines) == 6
    assert lines[0] == request["method"].upper()
    assert lines[3] == hashlib.sha256(request["body"]).hexdigest()
    # Percent-encoding leaves only unreserved characters, '%' and the separators.
    allowed = set(string.ascii_letters + string.digits + "-_.~%=&")
    assert set(lines[2]) <= allowed


COMPONENTS = ("method", "path", "query", "body", "timestamp", "nonce")


def _same_meaning(component: str, a: object, b: object) -> bool:
    if component == "method":
        return str(a).upper() == str(b).upper()
    if component == "query":
        return sorted(a) == sorted(b)  # type: ignore[arg-type]
    return a == b


@PROPERTY
@given(requests(), requests(), st.sampled_from(COMPONENTS))
def test_changing_any_one_component_changes_the_canonical_string(
    request: dict, other: dict, component: str
) -> None:
    assume(not _same_meaning(component, request[component], other[component]))
    changed = {**request, component: other[component]}
    assert canonical(changed) != canonical(request)


@PROPERTY
@given(requests(), st.text(min_size=1, max_size=64))
def test_what_is_signed_verifies(request: dict, secret: str) -> None:
    headers = signing.sign_headers(
        secret,
        request["method"],
        request["path"],
        request["query"],
        request["body"],
        timestamp=int(request["timestamp"]),
        nonce=request["nonce"],
    )
    assert signing.verify(
        secret,
        request["method"],
        request["path"],
        list(reversed(request["query"])),  # the server sees the parameters in any order
        request["body"],
        headers[signing.TIMESTAMP_HEADER],
        headers[signing.NONCE_HEADER],
        headers[signing.SIGNATURE_HEADER],
    )


@PROPERTY
@given(requests(), requests(), st.sampled_from(COMPONENTS), st.text(min_size=1, max_size=64))
def test_a_tampered_request_does_not_verify(
    request: dict, other: dict, component: str, secret: str
) -> None:
    assume(not _same_meaning(component, request[component], other[component]))
    presented = signing.signature(secret, canonical(request))
    tampered = {**request, component: other[component]}
    assert not signing.verify(secret, **tampered, presented=presented)


@PROPERTY
@given(requests(), st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_another_secret_does_not_verify(request: dict, secret: str, other: str) -> None:
    assume(secret.encode() != other.encode())
    presented = signing.signature(secret, canonical(request))
    assert not signing.verify(other, **request, presented=presented)


# Header values as aiohttp hands them over: any text, digits of every script included
# ("²" and "٣" pass str.isdigit()), and very long digit strings.
HEADER_VALUES = st.one_of(
    st.text(max_size=80),
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=12),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
)


@PROPERTY
@given(HEADER_VALUES, HEADER_VALUES, HEADER_VALUES)
@example("²", "n" * 16, "v1=00")
@example("9" * 5000, "n" * 16, "v1=00")
def test_header_checks_refuse_garbage_with_a_signature_error_only(
    timestamp: str, nonce: str, sig: str
) -> None:
    presented = {
        signing.TIMESTAMP_HEADER: timestamp,
        signing.NONCE_HEADER: nonce,
        signing.SIGNATURE_HEADER: sig,
    }
    try:
        signing.check_headers(presented, now=1_700_000_000)
    except signing.SignatureError as error:
        assert error.code in {"signature-required", "signature-invalid", "signature-stale"}
    else:
        # A well-formed triple within the window is out of these strategies' reach.
        pytest.fail(f"garbage headers were accepted: {presented!r}")
