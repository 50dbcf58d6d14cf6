"""Tokens: sign-in (password and client-credentials grants), refresh, sign-out.

All direct identity gRPC calls: each is one local transaction on identity's
side that must answer in milliseconds (docs/identity.md has the rule).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from agora import emails
from contracts.agora.identity.v1 import (
    ClientCredentialsGrant,
    PasswordGrant,
    SignOutRequest,
    Tokens,
)
from contracts.agora.identity.v1 import (
    RefreshRequest as RefreshCall,
)
from contracts.agora.identity.v1 import (
    SignInRequest as SignInCall,
)
from gateway.context import principal_of
from gateway.deps import deps
from gateway.problems import Problem
from gateway.ratelimit import admit_or_refuse
from gateway.routing import Route
from gateway.schemas import (
    ClientCredentialsRequest,
    RefreshRequest,
    SignInRequest,
    TokenResponse,
)


def _seconds_until(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    return max(0, int((moment - datetime.now(UTC)).total_seconds()))


def token_response(tokens: Tokens | None) -> TokenResponse:
    if tokens is None:
        raise Problem("upstream-error", "identity answered without tokens")
    return TokenResponse(
        access_token=tokens.access_token,
        expires_in=_seconds_until(tokens.access_expires_at) or 0,
        scope=" ".join(tokens.scopes),
        refresh_token=tokens.refresh_token or None,
        refresh_expires_in=_seconds_until(tokens.refresh_expires_at)
        if tokens.refresh_token
        else None,
    )


async def admit_account_sign_in(request: web.Request, email: str) -> None:
    """The per-account sign-in limit (rate class `signin`), keyed by the normalized email
    (agora/emails.py), the form identity matches. Every attempt counts, so an attacker can also
    hold one account's sign-in back while they keep guessing; the account's owner
    can still use a refresh token, and staff see the 429s in the gateway's metrics."""
    await admit_or_refuse(
        deps(request).admitter,
        "signin",
        f"email:{emails.normalize(email)}",
        unavailable="sign-in is unavailable; retry shortly",
        limited="too many sign-ins for this account; retry after the Retry-After delay",
    )


def _requested(scope: str | None) -> list[str]:
    return scope.split() if scope else []


async def sign_in(request: web.Request, body: SignInRequest) -> TokenResponse:
    gw = deps(request)
    email = emails.normalize(body.email)  # as registration stored it
    await admit_account_sign_in(request, email)
    call = SignInCall(
        password=PasswordGrant(email=email, password=body.password),
        scopes=_requested(body.scope),
    )
    async with gw.upstream.call(request, "identity.SignIn") as timeout:
        reply = await gw.upstream.identity.sign_in(call, timeout=timeout)
    return token_response(reply.tokens)


async def client_token(request: web.Request, body: ClientCredentialsRequest) -> TokenResponse:
    gw = deps(request)
    call = SignInCall(
        client_credentials=ClientCredentialsGrant(
            client_id=body.client_id, client_secret=body.client_secret
        ),
        scopes=_requested(body.scope),
    )
    async with gw.upstream.call(request, "identity.SignIn") as timeout:
        reply = await gw.upstream.identity.sign_in(call, timeout=timeout)
    return token_response(reply.tokens)


async def refresh(request: web.Request, body: RefreshRequest) -> TokenResponse:
    gw = deps(request)
    async with gw.upstream.call(request, "identity.Refresh") as timeout:
        reply = await gw.upstream.identity.refresh(
            RefreshCall(refresh_token=body.refresh_token), timeout=timeout
        )
    return token_response(reply.tokens)


async def sign_out(request: web.Request, _body: None) -> None:
    """Revokes the caller's session (an account's whole refresh family; a client's token)."""
    gw = deps(request)
    principal = principal_of(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":  # cannot happen after the auth middleware; kept explicit
        raise Problem("token-missing")
    async with gw.upstream.call(request, "identity.SignOut") as timeout:
        await gw.upstream.identity.sign_out(
            SignOutRequest(access_token=token.strip(), subject=principal.subject), timeout=timeout
        )


_TOKEN_PROBLEMS = ("invalid-credentials", "invalid-argument")

ROUTES = [
    Route(
        "POST",
        "/v1/auth/signin",
        sign_in,
        "Sign in with email and password: access and refresh tokens",
        "auth",
        route_class="auth",
        body=SignInRequest,
        response=TokenResponse,
        # upstream-rate-limited: identity's password checks saturated (RESOURCE_EXHAUSTED).
        problems=(*_TOKEN_PROBLEMS, "upstream-rate-limited"),
        secret_answers=True,
    ),
    Route(
        "POST",
        "/v1/auth/token",
        client_token,
        "Client-credentials grant for API clients: an access token",
        "auth",
        route_class="auth",
        body=ClientCredentialsRequest,
        response=TokenResponse,
        problems=_TOKEN_PROBLEMS,
        secret_answers=True,
    ),
    Route(
        "POST",
        "/v1/auth/refresh",
        refresh,
        "Rotate a refresh token; presenting a used one revokes its whole session, unless"
        " it comes again within the reuse grace (AGORA_IDENTITY_REFRESH_REUSE_GRACE_S, 30 s)"
        " of its first exchange while the token that exchange made is unused: then it is"
        " exchanged again (docs/identity.md)",
        "auth",
        route_class="auth",
        body=RefreshRequest,
        response=TokenResponse,
        problems=_TOKEN_PROBLEMS,
        secret_answers=True,
    ),
    Route(
        "POST",
        "/v1/auth/signout",
        sign_out,
        "Sign out: revoke the session of the presented access token",
        "auth",
        auth=True,
        route_class="auth",
        status=204,
        problems=("not-found",),
    ),
]
