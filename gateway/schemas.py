"""Request and response bodies of the public API: strict, unknown fields rejected.

These models are the contract clients see; their JSON Schemas are the
`components.schemas` of /openapi.json.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=3,
        max_length=254,
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    ),
]
# Registration's password rule; the admin command (workers/identity/admin.py) applies it too.
PASSWORD_MIN_LENGTH = 10
Password = Annotated[str, StringConstraints(min_length=PASSWORD_MIN_LENGTH, max_length=256)]
SCOPE_PATTERN = r"[a-z]+(:[a-z]+)?"
Scope = Annotated[str, StringConstraints(pattern=rf"^{SCOPE_PATTERN}$", max_length=64)]
# A requested scope: scope names separated by spaces. Bounded, because identity names
# what it refuses in its gRPC error and a huge one cost every caller on the gateway's
# HTTP/2 connection to identity (a header block over 64 KiB drops the connection).
RequestedScope = Annotated[
    str,
    StringConstraints(
        pattern=rf"^ *({SCOPE_PATTERN}( +{SCOPE_PATTERN})*)? *$",
        max_length=512,
    ),
]
Token = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Answer(BaseModel):
    """Responses: unknown fields are impossible (we build them), so no strictness needed."""

    model_config = ConfigDict(frozen=True)


# Requests -------------------------------------------------------------------


class RegisterRequest(Strict):
    email: Email
    password: Password
    display_name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)
    ]


class SignInRequest(Strict):
    email: Email
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    scope: RequestedScope | None = Field(
        default=None, description="Space-separated subset of your scopes"
    )


class ClientCredentialsRequest(Strict):
    grant_type: Literal["client_credentials"]
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    client_secret: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    scope: RequestedScope | None = Field(
        default=None, description="Space-separated subset of the client's scopes"
    )


class RefreshRequest(Strict):
    refresh_token: Token


class CreateApiClientRequest(Strict):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=32)]


class ListApiClientsQuery(Strict):
    # Query strings are text: these fields accept "true" / "25".
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    include_revoked: bool = False
    page_size: Annotated[int, Field(ge=1, le=100)] = 50
    cursor: Annotated[str, StringConstraints(max_length=512)] = ""


# Responses ------------------------------------------------------------------


class TokenResponse(Answer):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds until the access token expires")
    scope: str
    refresh_token: str | None = Field(default=None, description="Absent for client credentials")
    refresh_expires_in: int | None = None


class AccountResponse(Answer):
    account_id: str
    email: str
    display_name: str
    roles: list[str]
    scopes: list[str]
    created_at: datetime | None = None


class RegisterResponse(Answer):
    account_id: str
    email: str
    display_name: str


class MeResponse(Answer):
    subject: str
    principal_type: Literal["account", "api_client"]
    scopes: list[str]
    account: AccountResponse | None = None


class ApiClientResponse(Answer):
    client_id: str
    name: str
    owner_account_id: str
    scopes: list[str]
    revoked: bool
    created_at: datetime | None = None
    revoked_at: datetime | None = None


class CreatedApiClientResponse(ApiClientResponse):
    client_secret: str = Field(
        description="Shown once. The client-credentials secret and the HMAC key for signing"
    )


class ApiClientListResponse(Answer):
    clients: list[ApiClientResponse]
    next_cursor: str | None = None


class Jwk(Answer):
    kty: str
    crv: str
    x: str
    kid: str
    alg: str | None = None
    use: str | None = None


class JwksResponse(Answer):
    keys: list[Jwk]


class HealthResponse(Answer):
    status: str
    checks: dict[str, bool] | None = None


class ProblemResponse(Answer):
    """application/problem+json (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    trace_id: str
