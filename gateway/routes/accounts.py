"""Accounts: registration (a Temporal workflow) and the caller's own profile (a gRPC read)."""

from __future__ import annotations

import uuid

from aiohttp import web

from agora import emails, scopes
from agora.passwords import PasswordsBusy
from contracts.agora.identity.v1 import Account, GetAccountRequest
from gateway.context import principal_of
from gateway.deps import deps
from gateway.problems import RETRY_SOON, Problem
from gateway.routing import Route
from gateway.schemas import AccountResponse, MeResponse, RegisterRequest, RegisterResponse
from workflows.identity import (
    TASK_QUEUE,
    RegisterAccountInput,
    RegisterAccountWorkflow,
    register_workflow_id,
)


async def register(request: web.Request, body: RegisterRequest) -> RegisterResponse:
    gw = deps(request)
    # Hashing here keeps the clear password out of Temporal's history (only the hash
    # is an input); argon2id is off the event loop and bounded (agora/passwords.py).
    try:
        password_hash = await gw.passwords.hash(body.password)
    except PasswordsBusy as busy:
        raise Problem("upstream-rate-limited", busy.detail, headers=RETRY_SOON) from None
    data = RegisterAccountInput(
        account_id=str(uuid.uuid4()),
        email=emails.normalize(body.email),  # the one form sign-in looks up (agora/emails.py)
        display_name=body.display_name,
        password_hash=password_hash,
    )
    async with gw.upstream.call(request, "temporal.RegisterAccount") as timeout:
        ref = await gw.upstream.execute_workflow(
            RegisterAccountWorkflow.run,
            data,
            id=register_workflow_id(data.email),
            task_queue=TASK_QUEUE,
            budget_s=timeout,
        )
    return RegisterResponse(
        account_id=ref.account_id, email=data.email, display_name=data.display_name
    )


def account_response(account: Account | None) -> AccountResponse:
    if account is None:
        raise Problem("upstream-error", "identity answered without the account")
    return AccountResponse(
        account_id=account.account_id,
        email=account.email,
        display_name=account.display_name,
        roles=[role.name.lower() for role in account.roles if role.name],
        scopes=list(account.scopes),
        created_at=account.created_at,
    )


async def me(request: web.Request, _: None) -> MeResponse:
    principal = principal_of(request)
    answer = MeResponse(
        subject=principal.subject,
        principal_type="api_client" if principal.is_api_client else "account",
        scopes=sorted(principal.scopes),
    )
    if principal.is_api_client:
        return answer  # everything known about a client is in its token
    gw = deps(request)
    async with gw.upstream.call(request, "identity.GetAccount") as timeout:
        reply = await gw.upstream.identity.get_account(
            GetAccountRequest(account_id=principal.subject), timeout=timeout
        )
    return answer.model_copy(update={"account": account_response(reply.account)})


ROUTES = [
    Route(
        "POST",
        "/v1/accounts",
        register,
        "Register an account (customer role)",
        "accounts",
        route_class="auth",
        body=RegisterRequest,
        response=RegisterResponse,
        status=201,
        # upstream-rate-limited: password hashing saturated (agora/passwords.py).
        problems=("email-taken", "conflict", "invalid-argument", "upstream-rate-limited"),
    ),
    Route(
        "GET",
        "/v1/me",
        me,
        "The caller: token subject and scopes, and the account for account tokens",
        "accounts",
        auth=True,
        scopes=frozenset({scopes.PROFILE}),
        route_class="read",
        response=MeResponse,
        problems=("not-found",),
    ),
]
