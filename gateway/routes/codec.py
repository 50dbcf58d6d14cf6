"""The codec server's routes (gateway/codec.py): encode, decode, and the staff cookie session.

`/codec/decode` and `/codec/encode` speak Temporal's remote codec protocol for the
web UI and the CLI. `/codec/login` is a plain HTML form (no script) whose POST
signs a staff member in through identity and keeps the access token in an
HttpOnly cookie scoped to `/codec`, which is how the browser authenticates to the
codec while the dev server's UI has no sign-in of its own (docs/temporal-ui.md).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Annotated

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from contracts.agora.identity.v1 import PasswordGrant
from contracts.agora.identity.v1 import SignInRequest as SignInCall
from contracts.agora.identity.v1 import SignOutRequest as SignOutCall
from gateway import codec
from gateway.deps import deps
from gateway.failures import UPSTREAM_PROBLEMS
from gateway.forwarded import client_bucket
from gateway.openapi import FORM_CONTENT_TYPE
from gateway.problems import PROBLEM_TYPES, Problem, answer_headers
from gateway.ratelimit import admit_or_refuse
from gateway.routes.auth import admit_account_sign_in
from gateway.routing import UNREADABLE_BODY, Answer, Route, refuse_nul

_CODEC_PROBLEMS = (
    "token-missing",
    "token-malformed",
    "token-algorithm-rejected",
    "token-key-unknown",
    "token-signature-invalid",
    "token-expired",
    "token-not-yet-valid",
    "token-audience-invalid",
    "token-issuer-invalid",
    "token-claims-invalid",
    "token-revoked",
    "insufficient-scope",
    "permission-denied",
    "rate-limited",
    "dependency-unavailable",
    "unsupported-media-type",
    "body-too-large",
    "invalid-argument",
)
_PAGE_HEADERS = {
    # The page has no script; nothing may frame it (clickjacking a sign-in form).
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
    " form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    # same-origin, not no-referrer: with no-referrer the form POST carries `Origin: null`.
    "Referrer-Policy": "same-origin",
}


class CodecQuery(BaseModel):
    """What the UI appends to codec URLs; accepted and ignored (no external storage here)."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    preserveStorageRefs: bool | None = None  # the UI's parameter name


class SignInForm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    email: Annotated[str, StringConstraints(min_length=3, max_length=254, strip_whitespace=True)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


async def decode(request: web.Request, _: CodecQuery) -> web.Response:
    return await codec.convert(request, "decode")


async def encode(request: web.Request, _: CodecQuery) -> web.Response:
    return await codec.convert(request, "encode")


async def decode_preflight(request: web.Request, _: CodecQuery) -> web.Response:
    return codec.preflight(request)


async def encode_preflight(request: web.Request, _: CodecQuery) -> web.Response:
    return codec.preflight(request)


def _page(
    title: str, body: str, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:15px system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}"
        "label{display:block;margin:.8em 0}input{font:inherit;padding:.3em;width:100%}"
        "code{background:#eee;padding:0 .2em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(
        text=document,
        content_type="text/html",
        status=status,
        headers={**(headers or {}), **_PAGE_HEADERS},
    )


def _form(error: str = "") -> str:
    notice = f"<p role=alert><strong>{html.escape(error)}</strong></p>" if error else ""
    return (
        f"{notice}<p>Staff (admin or support) sign in here so that the Temporal UI can show"
        " workflow payloads in clear. The session lasts as long as the access token.</p>"
        "<form method=post action=/codec/session>"
        "<label>Email <input name=email type=email autocomplete=username required></label>"
        "<label>Password <input name=password type=password"
        " autocomplete=current-password required></label>"
        "<button type=submit>Sign in</button></form>"
    )


async def login_page(request: web.Request, _: None) -> web.Response:
    return _page("Agora codec sign-in", _form())


def _check_own_origin(request: web.Request) -> None:
    """Login CSRF: a form posted from another site must not plant a session."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise Problem("permission-denied", "sign in from the gateway's own /codec/login page")


async def _admit_sign_in(request: web.Request) -> None:
    """The same limit as the API's sign-in routes: password guessing costs time here too."""
    await admit_or_refuse(
        deps(request).admitter,
        "auth",
        client_bucket(request),
        unavailable="sign-in is unavailable; retry shortly",
        limited="too many sign-ins",
    )


async def _read_form(request: web.Request) -> dict[str, str]:
    """The form's text fields; a body aiohttp cannot parse is the sender's error, not a 500."""
    if request.content_type != FORM_CONTENT_TYPE:
        # The page posts a urlencoded form. aiohttp's multipart reader raises what no
        # list here would keep up with (RuntimeError for an unknown transfer encoding).
        raise Problem(
            "invalid-argument", f"the sign-in form could not be read: send {FORM_CONTENT_TYPE}"
        )
    try:
        # LookupError: an unknown charset; ValueError (UnicodeDecodeError included):
        # bytes that are not in that charset.
        form = await request.post()
    except (LookupError, ValueError, HttpProcessingError, *UNREADABLE_BODY):
        raise Problem("invalid-argument", "the sign-in form could not be read") from None
    # The route table's NUL guard covers path, query and JSON bodies, not forms.
    refuse_nul([*form.keys(), *form.values()])
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def _password_token(request: web.Request) -> str:
    form = await _read_form(request)
    try:
        fields = SignInForm.model_validate(form)
    except ValidationError:
        raise Problem("invalid-argument", "email and password are required") from None
    await _admit_sign_in(request)
    await admit_account_sign_in(request, fields.email)
    gw = deps(request)
    call = SignInCall(password=PasswordGrant(email=fields.email, password=fields.password))
    async with gw.upstream.call(request, "identity.SignIn") as timeout:
        reply = await gw.upstream.identity.sign_in(call, timeout=timeout)
    if reply.tokens is None or not reply.tokens.access_token:
        raise Problem("upstream-error", "identity answered without tokens")
    return reply.tokens.access_token


async def open_session(request: web.Request, _: None) -> web.Response:
    """Sign in (form: email + password, or an existing staff token as Bearer) -> cookie."""
    _check_own_origin(request)
    from_form = "Authorization" not in request.headers
    try:
        token = await _password_token(request) if from_form else codec.presented_token(request)
        principal = await codec.staff_principal(request, token)
    except Problem as problem:
        if not from_form:
            raise
        # The problem's own headers too: Retry-After on a 429 or 503, WWW-Authenticate.
        status = PROBLEM_TYPES[problem.code].status
        return _page(
            "Agora codec sign-in",
            _form(problem.detail),
            status=status,
            headers=answer_headers(problem),
        )
    ui = deps(request).settings.temporal_ui_url
    if from_form:
        response: web.Response = _page(
            "Signed in for the codec server",
            f"<p>Payloads decode for you until this access token expires"
            f" (in {codec.token_ttl(principal) // 60} minutes).</p>"
            f"<p>Open the <a href='{html.escape(ui)}'>Temporal UI</a>. Once per browser, in"
            " its codec settings, choose to use the browser's setting, enter this codec"
            f" endpoint (<code>{html.escape(deps(request).settings.ui_codec_endpoint)}</code>)"
            " and turn on <em>Include cross-origin credentials</em>"
            " (docs/temporal-ui.md).</p>",
        )
    else:
        response = web.Response(status=204)
    codec.session_cookie(response, request, token, codec.token_ttl(principal))
    return response


async def close_session(request: web.Request, _: None) -> web.Response:
    """Sign out: the cookie's token is revoked (identity's SignOut, as POST
    /v1/auth/signout does), then the cookie cleared. Clearing it alone left the
    token good until it expired, for whoever had copied it. A token no longer good
    (expired, revoked) only has its cookie cleared; a revocation that fails (identity
    or Redis down) is the problem answered, the cookie kept for a retry."""
    _check_own_origin(request)
    token = request.cookies.get(codec.COOKIE, "")
    if token:
        try:
            principal = await codec.staff_principal(request, token)
        except Problem as problem:
            if problem.status not in (401, 403):
                raise
        else:
            gw = deps(request)
            async with gw.upstream.call(request, "identity.SignOut") as timeout:
                await gw.upstream.identity.sign_out(
                    SignOutCall(access_token=token, subject=principal.subject), timeout=timeout
                )
    response = web.Response(status=204)
    response.del_cookie(codec.COOKIE, path=codec.COOKIE_PATH)
    return response


def _codec_route(method: str, operation: str, handler: object, summary: str) -> Route:
    return Route(
        method,
        f"/codec/{operation}",
        handler,  # type: ignore[arg-type]
        summary,
        "codec",
        # The UI appends ?preserveStorageRefs=true to the preflight too.
        query=CodecQuery,
        raw_response="application/json" if method == "POST" else None,
        status=200 if method == "POST" else 204,
        problems=_CODEC_PROBLEMS,
    )


ROUTES = [
    _codec_route(
        "POST",
        "decode",
        decode,
        "Temporal remote codec: decrypt payloads (staff: admin or support; bearer or cookie)",
    ),
    _codec_route(
        "POST",
        "encode",
        encode,
        "Temporal remote codec: encrypt payloads (staff: admin or support; bearer or cookie)",
    ),
    _codec_route("OPTIONS", "decode", decode_preflight, "CORS preflight (Temporal UI origin)"),
    _codec_route("OPTIONS", "encode", encode_preflight, "CORS preflight (Temporal UI origin)"),
    Route(
        "GET",
        "/codec/login",
        login_page,
        "Staff sign-in page for the codec server (sets the codec session cookie)",
        "codec",
        raw_response="text/html",
    ),
    Route(
        "POST",
        "/codec/session",
        open_session,
        "Open a codec session: form email+password, or a staff Bearer token; sets the cookie",
        "codec",
        raw_response="text/html",
        # A form's sign-in goes to identity: its refusal, or its failure to answer.
        problems=(
            *_CODEC_PROBLEMS,
            "invalid-credentials",
            "upstream-rate-limited",  # identity's password checks saturated
            *UPSTREAM_PROBLEMS,
        ),
        form=SignInForm,
        other_answers=(Answer(204, "Session opened for a staff Bearer token (no page)"),),
        # A form's sign-in page shows its problem; a Bearer call gets problem+json.
        problem_page="text/html",
    ),
    Route(
        "DELETE",
        "/codec/session",
        close_session,
        "Close the codec session: revokes its token and clears the cookie",
        "codec",
        status=204,
        problems=(*_CODEC_PROBLEMS, *UPSTREAM_PROBLEMS),
    ),
]
