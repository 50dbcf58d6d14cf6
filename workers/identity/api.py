"""Identity's gRPC read API."""

from __future__ import annotations

import uuid

import asyncpg
from grpclib import GRPCError
from grpclib.const import Status

from contracts.agora.identity.v1 import (
    Account,
    GetAccountRequest,
    GetAccountResponse,
    IdentityServiceBase,
    Role,
)


class IdentityApi(IdentityServiceBase):
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def get_account(self, message: GetAccountRequest) -> GetAccountResponse:
        try:
            account_id = uuid.UUID(message.account_id)
        except ValueError:
            raise GRPCError(Status.INVALID_ARGUMENT, "account_id must be a UUID") from None
        row = await self.pool.fetchrow(
            "SELECT account_id, email, display_name, roles, scopes, disabled, created_at"
            " FROM accounts WHERE account_id = $1",
            account_id,
        )
        if row is None:
            raise GRPCError(Status.NOT_FOUND, "no such account")
        return GetAccountResponse(
            account=Account(
                account_id=str(row["account_id"]),
                email=row["email"],
                display_name=row["display_name"],
                roles=[Role.from_string(r.upper()) for r in row["roles"]],
                scopes=list(row["scopes"]),
                disabled=row["disabled"],
                created_at=row["created_at"],
            )
        )
