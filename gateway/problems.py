"""Problem details (RFC 9457): the one shape of every error the gateway answers.

Each problem has a stable `type` URI (`https://agora.dev/problems/<code>`) that
clients may switch on; `title` is fixed per type, `detail` explains this
occurrence. The catalogue below is the single list of codes (docs/gateway.md
and the OpenAPI document are generated from / checked against it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

PROBLEM_BASE = "https://agora.dev/problems/"
CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True)
class ProblemType:
    status: int
    title: str


PROBLEM_TYPES: dict[str, ProblemType] = {
    # Authentication of the bearer token (401 unless noted).
    "token-missing": ProblemType(401, "Bearer token required"),
    "token-malformed": ProblemType(401, "Token is not a well-formed JWS"),
    "token-algorithm-rejected": ProblemType(401, "Token algorithm not accepted"),
    "token-key-unknown": ProblemType(401, "Token signed by an unknown key"),
    "token-signature-invalid": ProblemType(401, "Token signature does not verify"),
    "token-expired": ProblemType(401, "Token expired"),
    "token-not-yet-valid": ProblemType(401, "Token not yet valid"),
    "token-audience-invalid": ProblemType(401, "Token is for another audience"),
    "token-issuer-invalid": ProblemType(401, "Token from an unknown issuer"),
    "token-claims-invalid": ProblemType(401, "Token claims are incomplete or invalid"),
    "token-revoked": ProblemType(401, "Token revoked"),
    "insufficient-scope": ProblemType(403, "Token lacks a scope this route requires"),
    # Request signing (API clients).
    "signature-required": ProblemType(401, "Signed request required"),
    "signature-invalid": ProblemType(401, "Request signature does not verify"),
    "signature-stale": ProblemType(401, "Request timestamp outside the accepted window"),
    "nonce-replayed": ProblemType(401, "Request nonce already used"),
    # Admission.
    "rate-limited": ProblemType(429, "Too many requests"),
    "dependency-unavailable": ProblemType(503, "A dependency of the gateway is unavailable"),
    # The request itself.
    "body-too-large": ProblemType(413, "Request body too large"),
    "unsupported-media-type": ProblemType(415, "Request body must be application/json"),
    "malformed-json": ProblemType(400, "Request body is not valid JSON"),
    "validation-failed": ProblemType(422, "Request does not match the schema"),
    "route-not-found": ProblemType(404, "No such route"),
    "method-not-allowed": ProblemType(405, "Method not allowed on this route"),
    # Upstream answers (see gateway/failures.py for the mapping table).
    "invalid-argument": ProblemType(400, "Invalid argument"),
    "invalid-credentials": ProblemType(401, "Invalid credentials"),
    "permission-denied": ProblemType(403, "Permission denied"),
    "not-found": ProblemType(404, "Not found"),
    # Orders: the saga refused the order (priced lines, stock, payment); `detail` says why.
    "order-rejected": ProblemType(422, "Order rejected"),
    "conflict": ProblemType(409, "Conflict"),
    "email-taken": ProblemType(409, "An account with this email exists"),
    "precondition-failed": ProblemType(422, "The request cannot be applied in the current state"),
    "upstream-rate-limited": ProblemType(429, "A service is over its capacity"),
    "not-implemented": ProblemType(501, "Not implemented"),
    "upstream-error": ProblemType(502, "A service failed"),
    "upstream-unavailable": ProblemType(503, "A service is unavailable"),
    "upstream-timeout": ProblemType(504, "A service did not answer in time"),
    "internal-error": ProblemType(500, "Internal error"),
}


# The API's Bearer challenge (RFC 6750), and the one for a token that is no good.
WWW_AUTHENTICATE = 'Bearer realm="agora"'
INVALID_TOKEN = f'{WWW_AUTHENTICATE}, error="invalid_token"'

# Try again in a second: an overloaded or briefly unavailable dependency (Redis, the
# signing-secret lookup, a service over its capacity such as password hashing).
RETRY_SOON = {"Retry-After": "1"}


class Problem(Exception):
    """Raise anywhere below the edge middleware; it is rendered as problem+json."""

    def __init__(
        self,
        code: str,
        detail: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, object] | None = None,
    ):
        if code not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail or PROBLEM_TYPES[code].title
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})

    @property
    def status(self) -> int:
        return PROBLEM_TYPES[self.code].status


def problem_type_uri(code: str) -> str:
    return PROBLEM_BASE + code


def render(problem: Problem, *, instance: str, trace_id: str) -> web.Response:
    kind = PROBLEM_TYPES[problem.code]
    body = {
        "type": problem_type_uri(problem.code),
        "title": kind.title,
        "status": kind.status,
        "detail": problem.detail,
        "instance": instance,
        "trace_id": trace_id,
        **problem.extensions,
    }
    return web.Response(
        status=kind.status,
        body=json.dumps(body).encode(),
        content_type=CONTENT_TYPE,
        headers=answer_headers(problem),
    )


def answer_headers(problem: Problem) -> dict[str, str]:
    """The headers of any answer to `problem`, problem+json or a page showing it
    (Retry-After, RateLimit-*, WWW-Authenticate)."""
    headers = dict(problem.headers)
    if PROBLEM_TYPES[problem.code].status == 401:
        # RFC 9110: every 401 names a scheme; a signature's or a credential's too
        # (those about the token itself say more: error="invalid_token").
        headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    if PROBLEM_TYPES[problem.code].status == 503:
        # Every 503 says when to come back (RFC 9110 15.6.4): a service or a dependency
        # that was unreachable (a search cluster down, a service restarting) gave none.
        headers.setdefault("Retry-After", RETRY_SOON["Retry-After"])
    return headers
