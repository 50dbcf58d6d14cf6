"""Edge cases of the codec server's routes: malformed sign-in forms and large Payloads bodies."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway import codec
from gateway.deps import GATEWAY
from gateway.problems import Problem
from gateway.ratelimit import Admission, Verdict
from gateway.routes.codec import open_session
from gateway.tokens import Principal

FORM = "application/x-www-form-urlencoded"


def _stream(*chunks: bytes, later: tuple[bytes, ...] = ()) -> StreamReader:
    """A request body: `chunks` already received, `later` arriving after the first read."""
    stream = StreamReader(mock.Mock(_reading_paused=False), 2**16)
    for chunk in chunks:
        stream.feed_data(chunk)

    def rest() -> None:
        for chunk in later:
            stream.feed_data(chunk)
        stream.feed_eof()

    if later:
        asyncio.get_running_loop().call_soon(rest)
    else:
        stream.feed_eof()
    return stream


def _gateway(**parts: object) -> web.Application:
    """An app whose gateway has just `parts` (admitter, upstream, verifier stand-ins)."""
    app = web.Application()
    app[GATEWAY] = SimpleNamespace(**parts)  # type: ignore[assignment]
    return app


def _no_upstream() -> web.Application:
    """An app whose dependencies fail the test if the sign-in gets as far as them."""

    async def reached(*_: object, **__: object) -> None:
        raise AssertionError("the sign-in reached the rate limiter or identity")

    return _gateway(admitter=SimpleNamespace(admit=reached), upstream=SimpleNamespace(call=reached))


def _sign_in(content_type: str, body: bytes) -> web.Request:
    return make_mocked_request(
        "POST",
        "/codec/session",
        headers={"Content-Type": content_type, "Content-Length": str(len(body))},
        payload=_stream(body),
        app=_no_upstream(),
    )


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (f"{FORM}; charset=foo", b"email=a%40b.c&password=x"),  # unknown charset
        (FORM, b"email=\xff&password=x"),  # not UTF-8
        ("multipart/form-data", b"email=a%40b.c&password=x"),  # no boundary
    ],
    ids=["unknown-charset", "undecodable-bytes", "multipart-without-boundary"],
)
async def test_an_unreadable_sign_in_form_is_shown_as_a_400_page(
    content_type: str, body: bytes
) -> None:
    response = await open_session(_sign_in(content_type, body), None)
    assert (response.status, response.content_type) == (400, "text/html")
    assert "the sign-in form could not be read" in (response.text or "")


def _multipart(part_headers: bytes) -> bytes:
    return b"--b\r\n" + part_headers + b"\r\n\r\nx\r\n--b--\r\n"


@pytest.mark.parametrize(
    "part_headers",
    [
        # Each raised past the form's handling (a RuntimeError, aiohttp's InvalidHeader
        # and LineTooLong) and was answered 500 to anyone, signed in or not.
        b'Content-Disposition: form-data; name="email"\r\nContent-Transfer-Encoding: bogus',
        b'Content-Disposition: form-data; name="email"\r\nno colon here',
        b'Content-Disposition: form-data; name="email"\r\nX-Long: ' + b"a" * 9000,
        b'Content-Disposition: form-data; name="email"',  # well formed: still not the form
    ],
    ids=["unknown-transfer-encoding", "header-without-colon", "header-too-long", "well-formed"],
)
async def test_a_multipart_sign_in_form_is_shown_as_a_400_page(part_headers: bytes) -> None:
    request = _sign_in("multipart/form-data; boundary=b", _multipart(part_headers))
    response = await open_session(request, None)
    assert (response.status, response.content_type) == (400, "text/html")
    assert "the sign-in form could not be read" in (response.text or "")


async def test_a_nul_in_a_sign_in_field_is_refused_before_identity() -> None:
    response = await open_session(_sign_in(FORM, b"email=a%00b%40c.d&password=x"), None)
    assert (response.status, response.content_type) == (400, "text/html")
    assert "NUL" in (response.text or "")


def _payloads_request(stream: StreamReader) -> web.Request:
    return make_mocked_request(
        "POST", "/codec/decode", headers={"Content-Type": "application/json"}, payload=stream
    )


async def test_a_payloads_body_of_several_chunks_is_read_whole() -> None:
    data = base64.b64encode(b"x" * 200_000).decode()
    body = json.dumps({"payloads": [{"metadata": {}, "data": data}]}).encode()
    split = len(body) // 3
    stream = _stream(body[:split], later=(body[split : 2 * split], body[2 * split :]))
    payloads = await codec.read_payloads(_payloads_request(stream))
    assert [p.data for p in payloads] == [b"x" * 200_000]


async def test_a_payloads_body_over_the_cap_is_refused_as_too_large() -> None:
    chunk = b" " * (1024 * 1024)
    stream = _stream(chunk, later=(chunk,) * 4)
    with pytest.raises(codec.Problem) as refused:
        await codec.read_payloads(_payloads_request(stream))
    assert refused.value.code == "body-too-large"


async def _refused_sign_in(admit: Callable[..., Awaitable[Admission]]) -> web.Response:
    body = b"email=a%40b.cd&password=wrong"
    request = make_mocked_request(
        "POST",
        "/codec/session",
        headers={"Content-Type": FORM, "Content-Length": str(len(body))},
        payload=_stream(body),
        app=_gateway(admitter=SimpleNamespace(admit=admit)),
    )
    return await open_session(request, None)


async def test_a_rate_limited_sign_in_page_says_when_to_retry() -> None:
    # The page showing a problem carries the problem's headers, as its JSON would.
    async def limited(*_: object, **__: object) -> Admission:
        return Admission(Verdict.RATE_LIMITED, limit=10, remaining=0, retry_after_s=7.2, reset_s=9)

    response = await _refused_sign_in(limited)
    assert (response.status, response.content_type) == (429, "text/html")
    assert response.headers["Retry-After"] == "8"
    assert response.headers["RateLimit-Remaining"] == "0"
    assert "too many sign-ins" in (response.text or "")
    assert response.headers["Cache-Control"] == "no-store", "the page's own headers stay"


async def test_a_sign_in_page_without_redis_says_retry_soon() -> None:
    async def down(*_: object, **__: object) -> Admission:
        raise RedisConnectionError("refused")

    response = await _refused_sign_in(down)
    assert (response.status, response.headers["Retry-After"]) == (503, "1")


async def test_a_revoked_staff_token_is_named_an_invalid_token() -> None:
    # RFC 6750: a 401 about the token itself says error="invalid_token", as one the
    # verifier refuses does; the revocation (found by the admission) said only the realm.
    staff = Principal("staff-1", "account", frozenset({"support"}), "j", "s", 2_000_000_000, "k")

    async def verify(_: str) -> Principal:
        return staff

    async def revoked(*_: object, **__: object) -> Admission:
        return Admission(Verdict.JTI_REVOKED, limit=10, remaining=9, retry_after_s=0, reset_s=0)

    app = _gateway(verifier=SimpleNamespace(verify=verify), admitter=SimpleNamespace(admit=revoked))
    request = make_mocked_request("GET", "/codec/decode", app=app)
    with pytest.raises(Problem) as refused:
        await codec.staff_principal(request, "token")
    assert (refused.value.code, refused.value.status) == ("token-revoked", 401)
    assert refused.value.headers["WWW-Authenticate"] == (
        'Bearer realm="agora-codec", error="invalid_token"'
    )


def _codec_call(verify: Callable[[str], Awaitable[Principal]], admit: object) -> web.Request:
    app = _gateway(verifier=SimpleNamespace(verify=verify), admitter=SimpleNamespace(admit=admit))
    return make_mocked_request("POST", "/codec/decode", app=app)


async def _made_up(_: str) -> Principal:
    raise Problem("token-signature-invalid", "the token's signature does not verify")


async def _staff(_: str) -> Principal:
    return Principal("staff-1", "account", frozenset({"support"}), "j", "s", 2_000_000_000, "k")


def _admitter(verdicts: dict[str, Verdict], calls: list[tuple[str, str]]) -> object:
    """An admitter answering per bucket: the staff member's own, or an address's."""

    async def admit(route_class: str, bucket: str, **_: object) -> Admission:
        calls.append((route_class, bucket))
        return Admission(verdicts[bucket], limit=10, remaining=0, retry_after_s=3.5, reset_s=9)

    return admit


@pytest.mark.parametrize(
    ("verify", "own_verdict"),
    [(_made_up, None), (_staff, Verdict.JTI_REVOKED), (_staff, Verdict.SID_REVOKED)],
    ids=["made-up", "revoked-token", "revoked-session"],
)
async def test_a_refused_token_at_the_codec_costs_its_address_a_request(
    verify: Callable[[str], Awaitable[Principal]], own_verdict: Verdict | None
) -> None:
    # As on the API's routes (gateway/middleware.py): refused before any bucket, a
    # flood of them was answered 401 for ever, each one a signature check.
    calls: list[tuple[str, str]] = []
    verdicts = {"staff-1": own_verdict or Verdict.ALLOWED, "ip:127.0.0.1": Verdict.RATE_LIMITED}
    request = _codec_call(verify, _admitter(verdicts, calls))
    with mock.patch.object(type(request), "remote", "127.0.0.1"):
        with pytest.raises(Problem) as refused:
            await codec.staff_principal(request, "token")
    assert (refused.value.code, refused.value.status) == ("rate-limited", 429)
    assert refused.value.headers["Retry-After"] == "4"
    assert calls[-1] == ("read", "ip:127.0.0.1")


async def test_a_refused_token_stays_401_while_its_address_has_requests_left() -> None:
    calls: list[tuple[str, str]] = []
    request = _codec_call(_made_up, _admitter({"ip:127.0.0.1": Verdict.ALLOWED}, calls))
    with mock.patch.object(type(request), "remote", "127.0.0.1"):
        with pytest.raises(Problem) as refused:
            await codec.staff_principal(request, "token")
    assert (refused.value.code, refused.value.status) == ("token-signature-invalid", 401)
    assert calls == [("read", "ip:127.0.0.1")]


async def test_a_refused_token_without_redis_is_still_the_401() -> None:
    async def down(*_: object, **__: object) -> Admission:
        raise RedisConnectionError("refused")

    with pytest.raises(Problem) as refused:
        await codec.staff_principal(_codec_call(_made_up, down), "token")
    assert (refused.value.code, refused.value.status) == ("token-signature-invalid", 401)
    assert 'error="invalid_token"' in refused.value.headers["WWW-Authenticate"]


async def test_a_token_that_could_not_be_checked_costs_nothing() -> None:
    # identity's keys unavailable (503): the token may be good; nothing is charged.
    async def unavailable(_: str) -> Principal:
        raise Problem("dependency-unavailable", "the signing keys are unavailable")

    async def charged(*_: object, **__: object) -> Admission:
        raise AssertionError("a token not refused was charged")

    with pytest.raises(Problem) as refused:
        await codec.staff_principal(_codec_call(unavailable, charged), "token")
    assert refused.value.status == 503
    assert "WWW-Authenticate" not in refused.value.headers
