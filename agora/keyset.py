"""Keyset cursors over (a time, a UUID): the position after a row of a list ordered by
its creation time and id (orders' list, identity's API clients).

A cursor is opaque to the client: urlsafe base64 of a JSON pair, padding dropped.
Decoding takes anything a client may send back and either gives the position (the
time in UTC, the id) or raises InvalidArgument, never an error deeper down.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

from agora.errors import InvalidArgument


def encode(at: dt.datetime, key: uuid.UUID | str) -> str:
    raw = json.dumps([at.isoformat(), str(key)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at_text, key = json.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(at_text, str) or not isinstance(key, str):
            raise TypeError("cursor fields are strings")
        at = dt.datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("cursor time without an offset")
        # In UTC here: 0001-01-01T00:00+14:00 is before year 1 in UTC (OverflowError),
        # which would otherwise fail in the query as an INTERNAL error.
        return at.astimezone(dt.UTC), uuid.UUID(key)
    # RecursionError: base64 of "[[[[..." nests deeper than the JSON parser goes.
    except (ValueError, TypeError, RecursionError, OverflowError) as error:
        raise InvalidArgument("malformed cursor") from error
