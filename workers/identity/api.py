"""Identity's gRPC API: the direct (non-workflow) calls, translated to and from messages.

The logic lives in signin.py, apiclients.py and keys.py; this module only maps
messages. Domain errors become gRPC statuses in agora.grpc (start_server).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import asyncpg
import betterproto2

from agora import scopes
from agora.errors import InvalidArgument
from agora.grpc import peer_cn
from contracts.agora.common.v1 import PageInfo
from contracts.agora.identity.v1 import (
    Account,
    ApiClient,
    CreateApiClientRequest,
    CreateApiClientResponse,
    GetAccountRequest,
    GetAccountResponse,
    GetApiClientSigningSecretRequest,
    GetApiClientSigningSecretResponse,
    GetJwksRequest,
    GetJwksResponse,
    IdentityServiceBase,
    IntrospectRequest,
    IntrospectResponse,
    Jwk,
    ListApiClientsRequest,
    ListApiClientsResponse,
    PrincipalType,
    RefreshRequest,
    RefreshResponse,
    Role,
    SignInRequest,
    SignInResponse,
    SignOutRequest,
    SignOutResponse,
    Tokens,
)
from workers.identity.apiclients import ApiClientRow, ApiClients
from workers.identity.errors import AccountNotFound, NotTheGateway
from workers.identity.keys import KeyRing
from workers.identity.signin import Grant, TokenService

if TYPE_CHECKING:
    from workers.identity.tokens import VerifiedToken

# The only peer (mTLS certificate CN) allowed to read API clients' signing secrets.
SIGNING_SECRET_READER = "gateway"
# The peers allowed to create API clients: the gateway, whose admin route authorizes
# the caller first. No other service has a reason to, and any mTLS peer could
# otherwise mint a client with any scopes. (The admin command registers accounts
# through the workflow and creates no API clients.)
API_CLIENT_CREATORS = frozenset({"gateway"})

_PTYPE = {"account": PrincipalType.ACCOUNT, "api_client": PrincipalType.API_CLIENT}


class IdentityApi(IdentityServiceBase):
    def __init__(
        self, pool: asyncpg.Pool, keys: KeyRing, token_service: TokenService, clients: ApiClients
    ):
        self.pool = pool
        self.keys = keys
        self.tokens = token_service
        self.clients = clients

    # Tokens ------------------------------------------------------------------

    async def sign_in(self, message: SignInRequest) -> SignInResponse:
        grant_kind = betterproto2.which_one_of(message, "grant")[0]
        if grant_kind == "password" and message.password is not None:
            grant = await self.tokens.sign_in_password(
                message.password.email, message.password.password, list(message.scopes)
            )
        elif grant_kind == "client_credentials" and message.client_credentials is not None:
            creds = message.client_credentials
            grant = await self.tokens.sign_in_client(
                creds.client_id, creds.client_secret, list(message.scopes)
            )
        else:
            raise InvalidArgument("a password or client_credentials grant is required")
        return SignInResponse(tokens=_tokens(grant))

    async def refresh(self, message: RefreshRequest) -> RefreshResponse:
        if not message.refresh_token:
            raise InvalidArgument("refresh_token is required")
        return RefreshResponse(tokens=_tokens(await self.tokens.refresh(message.refresh_token)))

    async def sign_out(self, message: SignOutRequest) -> SignOutResponse:
        which = betterproto2.which_one_of(message, "session")[0]
        if not which:
            raise InvalidArgument("one of refresh_token, sid or access_token is required")
        result = await self.tokens.sign_out(
            refresh_token=message.refresh_token or "",
            sid=message.sid or "",
            access_token=message.access_token or "",
            subject=message.subject,
        )
        return SignOutResponse(sid=result.sid, already_revoked=result.already_revoked)

    async def introspect(self, message: IntrospectRequest) -> IntrospectResponse:
        verified = await self.tokens.introspect(message.token)
        return _introspection(verified) if verified else IntrospectResponse(active=False)

    async def get_jwks(self, message: GetJwksRequest) -> GetJwksResponse:
        return GetJwksResponse(keys=[Jwk(**jwk) for jwk in await self.keys.jwks()])

    # Accounts ----------------------------------------------------------------

    async def get_account(self, message: GetAccountRequest) -> GetAccountResponse:
        try:
            account_id = uuid.UUID(message.account_id)
        except ValueError:
            raise InvalidArgument("account_id must be a UUID") from None
        row = await self.pool.fetchrow(
            "SELECT account_id, email, display_name, roles, scopes, disabled, created_at"
            " FROM accounts WHERE account_id = $1",
            account_id,
        )
        if row is None:
            raise AccountNotFound("no such account")
        return GetAccountResponse(
            account=Account(
                account_id=str(row["account_id"]),
                email=row["email"],
                display_name=row["display_name"],
                roles=[Role.from_string(r.upper()) for r in row["roles"]],
                scopes=scopes.scopes_for(row["roles"], row["scopes"]),
                disabled=row["disabled"],
                created_at=row["created_at"],
            )
        )

    # API clients -------------------------------------------------------------

    async def create_api_client(self, message: CreateApiClientRequest) -> CreateApiClientResponse:
        if peer_cn() not in API_CLIENT_CREATORS:
            raise NotTheGateway("only the gateway may create API clients")
        client, secret = await self.clients.create(
            message.name, message.owner_account_id, list(message.scopes), message.idempotency_key
        )
        return CreateApiClientResponse(client=_api_client(client), client_secret=secret)

    async def list_api_clients(self, message: ListApiClientsRequest) -> ListApiClientsResponse:
        page = message.page
        result = await self.clients.page(
            message.owner_account_id,
            message.include_revoked,
            page.page_size if page else 0,
            page.cursor if page else "",
        )
        return ListApiClientsResponse(
            clients=[_api_client(c) for c in result.clients],
            page=PageInfo(next_cursor=result.next_cursor, has_more=bool(result.next_cursor)),
        )

    async def get_api_client_signing_secret(
        self, message: GetApiClientSigningSecretRequest
    ) -> GetApiClientSigningSecretResponse:
        if peer_cn() != SIGNING_SECRET_READER:
            raise NotTheGateway("only the gateway may read signing secrets")
        secret, granted = await self.clients.signing_secret(message.client_id)
        return GetApiClientSigningSecretResponse(
            client_id=message.client_id, secret=secret, scopes=list(granted)
        )


def _tokens(grant: Grant) -> Tokens:
    session = grant.session
    return Tokens(
        access_token=grant.access.token,
        token_type="Bearer",
        access_expires_at=grant.access.expires_at,
        refresh_token=session.refresh_token if session else "",
        refresh_expires_at=session.refresh_expires_at if session else None,
        scopes=list(grant.principal.scopes),
        subject=grant.principal.subject,
        principal_type=_PTYPE[grant.principal.kind],
    )


def _introspection(verified: VerifiedToken) -> IntrospectResponse:
    return IntrospectResponse(
        active=True,
        subject=verified.principal.subject,
        principal_type=_PTYPE[verified.principal.kind],
        scopes=list(verified.principal.scopes),
        issuer=verified.issuer,
        audience=verified.audience,
        jti=verified.jti,
        kid=verified.kid,
        issued_at=verified.issued_at,
        expires_at=verified.expires_at,
        sid=verified.principal.sid,
    )


def _api_client(client: ApiClientRow) -> ApiClient:
    return ApiClient(
        client_id=client.client_id,
        name=client.name,
        owner_account_id=client.owner_account_id,
        scopes=list(client.scopes),
        revoked=client.revoked_at is not None,
        created_at=client.created_at,
        revoked_at=client.revoked_at,
    )
