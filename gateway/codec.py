"""The codec server: Temporal's remote codec protocol over the platform's payload codec.

The Temporal web UI (and `temporal --codec-endpoint`) POSTs
`{"payloads": [{"metadata": {k: base64}, "data": base64}]}` (protobuf JSON of
`temporal.api.common.v1.Payloads`) to `<endpoint>/decode` or `/encode`, with the
namespace in `X-Namespace`; the answer has the same shape. Decoding turns the
AES-256-GCM payloads that agora/codec.py wrote back into the SDK's JSON payloads,
so the UI shows order lines, addresses and payment references in clear. That is
PII, so:

* only staff may call it: a valid, unrevoked account token holding the `admin`
  or `support` scope, sent as `Authorization: Bearer` (CLI, scripts) or as the
  HttpOnly `agora_codec` cookie that `POST /codec/session` sets after a staff
  sign-in (the browser: the dev server's UI cannot pass a bearer token, see
  docs/temporal-ui.md);
* CORS answers only the Temporal UI's origins, with credentials, and a request
  from any other origin is refused before anything is decrypted;
* every decode is logged with who asked and how many payloads (who read PII);
* secrets are never decoded for anyone: an account's password hash (any argon2
  hash, also where a failure's message quotes one) and a card token are replaced
  by "[redacted]" in each JSON payload before it is answered (`redacted`).

The routes live in gateway/routes/codec.py; this module holds the protocol, the
authorization and the CORS policy.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web
from cryptography.exceptions import InvalidTag
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from agora import scopes
from agora.codec import ENCODING, EncryptionCodec, UnknownKey
from agora.config import Settings
from gateway.deps import deps
from gateway.forwarded import client_bucket
from gateway.problems import Problem
from gateway.ratelimit import admit_or_refuse, charge_refusal
from gateway.routing import UNREADABLE_BODY
from gateway.tokens import Principal

log = logging.getLogger(__name__)

COOKIE = "agora_codec"
COOKIE_PATH = "/codec"
# Either scope lets a token decode; nothing else does.
CODEC_SCOPES = frozenset({scopes.ADMIN, scopes.SUPPORT})
# A history page can batch many payloads; the API's 64 KiB body limit is for API calls.
MAX_BODY_BYTES = 4 * 1024 * 1024
_READ_CHUNK_BYTES = 64 * 1024
_WWW_AUTHENTICATE = 'Bearer realm="agora-codec"'
_ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization, Authorization-Extras"

# Values no one reading a history needs, and support must not get: an account's
# argon2id hash can be cracked offline (admins' too), and a card token charges the
# card through POST /v1/orders. Compared without case, "_" or "-", so json/protobuf's
# camelCase names match as well.
SECRET_FIELDS = frozenset({"passwordhash", "cardtoken"})
REDACTED = "[redacted]"
_JSON_ENCODINGS = frozenset({b"json/plain", b"json/protobuf"})
# A PHC-format argon2 hash anywhere in a string: a failure's message can quote a row.
_ARGON2_HASH = re.compile(
    r"\$argon2(?:id|i|d)\$(?:v=\d+\$)?m=\d+,t=\d+,p=\d+(?:\$[A-Za-z0-9+/]+=*){0,2}"
)


def allowed_origins(settings: Settings) -> frozenset[str]:
    """The Temporal UI's origins: the configured UI URL, and its port on 127.0.0.1 / localhost."""
    port = settings.ports["temporal_ui"]
    parts = urlsplit(settings.temporal_ui_url)
    return frozenset(
        {
            f"{parts.scheme}://{parts.netloc}",
            f"http://127.0.0.1:{port}",
            f"http://localhost:{port}",
        }
    )


def cors_headers(request: web.Request, *, preflight: bool = False) -> dict[str, str]:
    """CORS headers for an allowed Origin; none otherwise (the browser then blocks the answer)."""
    origin = request.headers.get("Origin")
    headers = {"Vary": "Origin"}
    if origin is None or origin not in allowed_origins(deps(request).settings):
        return headers
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Credentials"] = "true"
    if preflight:
        headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
        headers["Access-Control-Max-Age"] = "600"
    return headers


def check_origin(request: web.Request) -> None:
    """A browser request from a page other than the UI is refused (CLI calls send no Origin)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin not in allowed_origins(deps(request).settings):
        raise Problem("permission-denied", "this origin may not use the codec server")


def presented_token(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    cookie = request.cookies.get(COOKIE, "")
    if cookie:
        return cookie
    raise Problem(
        "token-missing",
        "sign in at /codec/login (browser) or send Authorization: Bearer <staff token>",
        headers={"WWW-Authenticate": _WWW_AUTHENTICATE},
    )


async def staff_principal(request: web.Request, token: str) -> Principal:
    """The token's principal if it is a staff account's, unrevoked and within its rate.
    A token refused (made up, expired, revoked) costs the sender's address a request
    of the read class, as on the API's routes (gateway/middleware.py)."""
    gw = deps(request)
    try:
        principal = await gw.verifier.verify(token)
    except Problem as problem:
        await _refused(request, problem)
        raise
    if principal.is_api_client:
        raise Problem(
            "permission-denied", "the codec server is for staff accounts, not API clients"
        )
    if not principal.scopes & CODEC_SCOPES:
        raise Problem(
            "insufficient-scope",
            "decoding payloads requires scope admin or support",
            headers={
                "WWW-Authenticate": f'{_WWW_AUTHENTICATE}, error="insufficient_scope",'
                ' scope="admin support"'
            },
        )
    # Without the revocation check a revoked staff token could read PII: fail closed.
    try:
        await admit_or_refuse(
            gw.admitter,
            "read",
            principal.subject,
            jti=principal.jti,
            sid=principal.sid,
            unavailable="the revocation check is unavailable; retry shortly",
            limited="too many codec requests",
        )
    except Problem as problem:
        await _refused(request, problem)  # revoked
        raise
    return principal


async def _refused(request: web.Request, problem: Problem) -> None:
    if problem.status != 401:  # a 503 is not a refused token: it may be good
        return
    # RFC 6750: a 401 about the token itself says so.
    problem.headers.setdefault("WWW-Authenticate", f'{_WWW_AUTHENTICATE}, error="invalid_token"')
    await charge_refusal(
        deps(request).admitter, "read", client_bucket(request), limited="too many refused tokens"
    )


def check_namespace(request: web.Request) -> str:
    namespace = request.headers.get("X-Namespace", "")
    served = deps(request).settings.temporal_namespace
    if namespace and namespace != served:
        raise Problem("permission-denied", f"this codec server serves namespace {served}")
    return namespace or served


async def _read_body(request: web.Request) -> bytes:
    """The whole body, up to the cap: `content.read(n)` returns only what is buffered."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(_READ_CHUNK_BYTES):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise Problem("body-too-large", f"at most {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    except UNREADABLE_BODY:
        raise Problem("invalid-argument", "the request body could not be read") from None
    return b"".join(chunks)


async def read_payloads(request: web.Request) -> list[Payload]:
    if request.content_type != "application/json":
        # Also what makes a cross-origin call need a CORS preflight.
        raise Problem("unsupported-media-type", f"got {request.content_type or 'no content type'}")
    raw = await _read_body(request)
    message = Payloads()
    try:
        json_format.Parse(raw, message, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError):
        raise Problem("invalid-argument", "the body is not a Payloads JSON document") from None
    return list(message.payloads)


def payloads_response(payloads: list[Payload], headers: Mapping[str, str]) -> web.Response:
    body = json_format.MessageToJson(Payloads(payloads=payloads), indent=None)
    return web.Response(
        text=body,
        content_type="application/json",
        headers={**headers, "Cache-Control": "no-store"},
    )


def payload_codec(request: web.Request) -> EncryptionCodec:
    """The codec of the gateway's own Temporal client: the key ring it loaded at start."""
    codec = deps(request).upstream.temporal.data_converter.payload_codec
    if not isinstance(codec, EncryptionCodec):
        raise Problem("internal-error", "the gateway's Temporal client has no payload codec")
    return codec


async def decode_each(codec: EncryptionCodec, payloads: list[Payload]) -> tuple[list[Payload], int]:
    """Decrypt what can be; a payload under an unknown key or tampered with stays as it is.

    One bad payload must not blank a whole history page in the UI.
    """
    out: list[Payload] = []
    failed = 0
    for payload in payloads:
        if payload.metadata.get("encoding") != ENCODING:
            out.append(payload)  # in clear already (a marker's, one written before encryption)
            continue
        try:
            out.extend(await codec.decode([payload]))
        except (UnknownKey, InvalidTag, ValueError):
            failed += 1
            out.append(payload)
    return out, failed


def _is_secret(key: str) -> bool:
    return key.lower().replace("_", "").replace("-", "") in SECRET_FIELDS


def _redact_in_place(document: list[object]) -> bool:
    """Redact every secret field's value and argon2 hash in a parsed JSON document
    (boxed in a list, so a bare string can be replaced too); True if any was.

    A loop, not recursion: json.loads reads nearly as deep as Python's stack goes,
    and a handler runs with much of that stack in use.
    """
    found = False
    pending: list[dict[Any, Any] | list[Any]] = [document]
    while pending:
        node = pending.pop()
        slots: list[tuple[Any, Any]]
        slots = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for slot, value in slots:
            if isinstance(node, dict) and _is_secret(slot):
                node[slot] = REDACTED
                found = True
            elif isinstance(value, str) and _ARGON2_HASH.search(value):
                node[slot] = _ARGON2_HASH.sub(REDACTED, value)
                found = True
            elif isinstance(value, dict | list):
                pending.append(value)
    return found


def redacted(payload: Payload) -> Payload:
    """The decoded payload without secrets; the very same payload when it holds none."""
    if payload.metadata.get("encoding") not in _JSON_ENCODINGS:
        return payload
    try:
        document: list[object] = [json.loads(payload.data)]
    except (ValueError, RecursionError):
        # The platform writes only JSON it can read back; what cannot be checked is
        # not shown (fail closed).
        document = [REDACTED]
    else:
        if not _redact_in_place(document):
            return payload
    data = json.dumps(document[0], separators=(",", ":")).encode()
    return Payload(metadata=payload.metadata, data=data)


async def convert(request: web.Request, operation: Literal["encode", "decode"]) -> web.Response:
    cors = cors_headers(request)
    try:
        check_origin(request)
        principal = await staff_principal(request, presented_token(request))
        if operation == "encode" and scopes.ADMIN not in principal.scopes:
            # Encoding is what lets a payload into the workers (they refuse one in
            # clear, agora.codec): support reads histories, it does not start work.
            raise Problem(
                "insufficient-scope",
                "encoding payloads requires scope admin",
                headers={
                    "WWW-Authenticate": f'{_WWW_AUTHENTICATE}, error="insufficient_scope",'
                    ' scope="admin"'
                },
            )
        namespace = check_namespace(request)
        payloads = await read_payloads(request)
        codec = payload_codec(request)
        started = time.perf_counter()
        failed = hidden = 0
        if operation == "decode":
            decoded, failed = await decode_each(codec, payloads)
            result = [redacted(payload) for payload in decoded]
            hidden = sum(after is not before for after, before in zip(result, decoded, strict=True))
        else:
            result = await codec.encode(payloads)
        log.info(
            "codec %s",
            operation,
            extra={
                "subject": principal.subject,
                "namespace": namespace,
                "payloads": len(payloads),
                "encrypted": sum(p.metadata.get("encoding") == ENCODING for p in payloads),
                "undecodable": failed,
                "redacted": hidden,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )
        return payloads_response(result, cors)
    except Problem as problem:
        # The UI must be able to read a refusal too.
        problem.headers.update(cors)
        raise


def preflight(request: web.Request) -> web.Response:
    headers = cors_headers(request, preflight=True)
    if "Access-Control-Allow-Origin" not in headers:
        raise Problem("permission-denied", "this origin may not use the codec server")
    return web.Response(status=204, headers=headers)


def session_cookie(
    response: web.StreamResponse, request: web.Request, token: str, ttl: int
) -> None:
    """The staff token as an HttpOnly cookie sent only to /codec.

    SameSite=Strict still reaches the codec from the UI: 127.0.0.1:<ui> and
    127.0.0.1:<gateway> are the same site (ports do not count), so the UI's
    credentialed fetch carries it while pages of other sites cannot. `Secure`
    is set whenever the gateway is reached over HTTPS.
    """
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(ttl, 0),
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def token_ttl(principal: Principal) -> int:
    return principal.expires_at - int(time.time())
