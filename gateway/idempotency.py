"""The `Idempotency-Key` request header: one rule for every write that takes it.

A client sends the same key when it retries a write; the gateway derives the
workflow id from it (scoped to the caller where the route says so), so the retry
joins the first attempt instead of doing the work twice. A key that breaks the
rule is refused (never silently replaced: a replaced key would turn the client's
retry into a second write).
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from gateway.problems import Problem

HEADER = "Idempotency-Key"
PATTERN = r"^[A-Za-z0-9._:-]{8,128}$"
KEY_PATTERN = re.compile(PATTERN)
RULE = "8-128 of A-Z a-z 0-9 . _ : -"


def idempotency_key(request: web.Request, *, required: bool) -> str:
    """The request's key; a fresh one when it may be left out and was."""
    key = request.headers.get(HEADER)
    if key is None and not required:
        return uuid.uuid4().hex
    # An empty header is a key that breaks the rule, not one left out: a client
    # that sends it on every retry would otherwise get a fresh key, and a write, each time.
    if key is None or not KEY_PATTERN.fullmatch(key):
        need = "is required" if required else "must be"
        raise Problem("invalid-argument", f"an {HEADER} header of {RULE} {need}")
    return key
