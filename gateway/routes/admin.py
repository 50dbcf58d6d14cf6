"""API clients (machine accounts), for holders of the identity:admin scope.

Creation is a direct gRPC call because its answer holds the client's secret,
which must never be persisted outside identity (a workflow would keep it in its
history); revocation is a workflow (mark revoked, then revoke live tokens).
"""

from __future__ import annotations

import uuid

from aiohttp import web

from agora import scopes
from contracts.agora.common.v1 import PageRequest
from contracts.agora.identity.v1 import (
    ApiClient,
    ListApiClientsRequest,
)
from contracts.agora.identity.v1 import (
    CreateApiClientRequest as CreateApiClientCall,
)
from gateway import idempotency
from gateway.context import principal_of
from gateway.deps import deps
from gateway.idempotency import idempotency_key
from gateway.problems import Problem
from gateway.routing import Route
from gateway.schemas import (
    ApiClientListResponse,
    ApiClientResponse,
    CreateApiClientRequest,
    CreatedApiClientResponse,
    ListApiClientsQuery,
)
from workflows.identity import (
    TASK_QUEUE,
    RevokeApiClientInput,
    RevokeApiClientWorkflow,
    revoke_api_client_workflow_id,
)

ADMIN = frozenset({scopes.IDENTITY_ADMIN})


def client_response(client: ApiClient | None) -> ApiClientResponse:
    if client is None:
        raise Problem("upstream-error", "identity answered without the client")
    return ApiClientResponse(
        client_id=client.client_id,
        name=client.name,
        owner_account_id=client.owner_account_id,
        scopes=list(client.scopes),
        revoked=client.revoked,
        created_at=client.created_at,
        revoked_at=client.revoked_at,
    )


async def create_api_client(
    request: web.Request, body: CreateApiClientRequest
) -> CreatedApiClientResponse:
    principal = principal_of(request)
    if principal.is_api_client:
        # Every client is owned by (and accountable to) a person's account.
        raise Problem("permission-denied", "API clients are created by an admin account")
    beyond = set(body.scopes) - principal.scopes
    if beyond:
        # A client acts for its creator: it gets no scope the creator's token lacks
        # (an admin signed in with a narrowed scope cannot mint a wider client).
        raise Problem(
            "permission-denied",
            f"your token does not hold these scopes: {' '.join(sorted(beyond))}",
        )
    # Optional: with a key, a retry after a lost answer gets the same client and
    # secret again (identity keeps the key an hour) instead of a second client whose
    # secret nobody received; the same key with another body is 409. Scoped to the
    # session (which a refresh keeps), so the key read elsewhere, by another session
    # of the same account, shows no secret.
    key = ""
    if idempotency.HEADER in request.headers:
        key = f"{principal.sid}:{idempotency_key(request, required=True)}"
    gw = deps(request)
    call = CreateApiClientCall(
        name=body.name,
        owner_account_id=principal.subject,
        scopes=list(body.scopes),
        idempotency_key=key,
    )
    async with gw.upstream.call(request, "identity.CreateApiClient") as timeout:
        reply = await gw.upstream.identity.create_api_client(call, timeout=timeout)
    client = client_response(reply.client)
    return CreatedApiClientResponse(**client.model_dump(), client_secret=reply.client_secret)


async def list_api_clients(
    request: web.Request, query: ListApiClientsQuery
) -> ApiClientListResponse:
    gw = deps(request)
    call = ListApiClientsRequest(
        include_revoked=query.include_revoked,
        page=PageRequest(page_size=query.page_size, cursor=query.cursor),
    )
    async with gw.upstream.call(request, "identity.ListApiClients") as timeout:
        reply = await gw.upstream.identity.list_api_clients(call, timeout=timeout)
    page = reply.page
    return ApiClientListResponse(
        clients=[client_response(c) for c in reply.clients],
        next_cursor=page.next_cursor if page is not None and page.has_more else None,
    )


async def revoke_api_client(request: web.Request, _: None) -> None:
    gw = deps(request)
    # Canonical: its tokens carry the id as identity wrote it, and so must the
    # revocation (an upper-case id once revoked nothing that was live).
    try:
        client_id = str(uuid.UUID(request.match_info["client_id"]))
    except ValueError:
        raise Problem("not-found", "no such API client") from None
    principal = principal_of(request)
    async with gw.upstream.call(request, "temporal.RevokeApiClient") as timeout:
        # Idempotent by the client: a second DELETE (a double click, a retry after a
        # 504) joins the running revoke or reads the done one, 204, where it was a 409
        # "already started". Another admin's request is the same revoke (the id is not
        # a caller's key): same_request=False.
        await gw.upstream.execute_workflow(
            RevokeApiClientWorkflow.run,
            RevokeApiClientInput(client_id=client_id, revoked_by=principal.subject),
            id=revoke_api_client_workflow_id(client_id),
            task_queue=TASK_QUEUE,
            budget_s=timeout,
            idempotent=True,
            same_request=False,
        )
    gw.secrets.forget(client_id)


ROUTES = [
    Route(
        "POST",
        "/v1/admin/api-clients",
        create_api_client,
        "Create an API client; the answer holds its secret, shown this once"
        " (a retry with the same Idempotency-Key within an hour shows it again)",
        "admin",
        auth=True,
        scopes=ADMIN,
        route_class="write",
        body=CreateApiClientRequest,
        response=CreatedApiClientResponse,
        status=201,
        problems=("invalid-argument", "permission-denied", "conflict"),
        secret_answers=True,
        idempotency="optional",
    ),
    Route(
        "GET",
        "/v1/admin/api-clients",
        list_api_clients,
        "List API clients",
        "admin",
        auth=True,
        scopes=ADMIN,
        route_class="read",
        query=ListApiClientsQuery,
        response=ApiClientListResponse,
    ),
    Route(
        "DELETE",
        "/v1/admin/api-clients/{client_id}",
        revoke_api_client,
        "Revoke an API client and every token it holds",
        "admin",
        auth=True,
        scopes=ADMIN,
        route_class="write",
        status=204,
        problems=("not-found",),
    ),
]
