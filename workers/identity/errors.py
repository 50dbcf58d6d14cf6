"""Identity's domain errors. The gRPC API maps each to its status via agora.errors."""

from __future__ import annotations

from agora.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated

# Activity failure types the gateway maps (ApplicationError.type); stable names.
EMAIL_TAKEN = "EmailTaken"
API_CLIENT_NOT_FOUND = "ApiClientNotFound"
INVALID_REGISTRATION = "InvalidRegistration"


class InvalidCredentials(Unauthenticated):
    """Wrong email or password, unknown or revoked client, or a wrong client secret.

    One message for all of them, so a caller cannot probe which emails exist.
    """

    code = "invalid-credentials"

    def __init__(self) -> None:
        super().__init__("invalid credentials")


class InvalidRefreshToken(Unauthenticated):
    """Unknown, expired or revoked refresh token."""

    code = "invalid-refresh-token"

    def __init__(self, detail: str = "invalid refresh token") -> None:
        super().__init__(detail)


class RefreshTokenReused(InvalidRefreshToken):
    """A refresh token was presented a second time; its whole family is now revoked."""

    code = "refresh-token-reused"

    def __init__(self) -> None:
        super().__init__("refresh token reused: the session is revoked")


class InvalidToken(Unauthenticated):
    """An access token that does not verify (signature, issuer, audience, time)."""

    code = "invalid-token"


class InvalidScope(InvalidArgument):
    code = "invalid-scope"


class EmailTaken(AlreadyExists):
    code = "email-taken"


class SessionNotFound(NotFound):
    code = "session-not-found"


class ApiClientNotFound(NotFound):
    code = "api-client-not-found"


class AccountNotFound(NotFound):
    code = "account-not-found"


class NotTheGateway(PermissionDenied):
    """A peer other than the gateway asked for a signing secret or a new API client."""

    code = "not-the-gateway"
