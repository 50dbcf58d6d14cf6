"""Text PostgreSQL can hold: no NUL, and UTF-8 only (a lone surrogate is none).

Such text fails its statement the same way on every retry (a NUL: SQLSTATE
22021; a lone surrogate: asyncpg cannot encode it), so an activity writing it is
retried for ever. Callers refuse it up front, or show it in a form that stores.
"""

from __future__ import annotations

from agora.errors import InvalidArgument

__all__ = ["checked", "shown", "storable"]


def storable(text: str) -> bool:
    """False for text PostgreSQL cannot store: a NUL, or a lone surrogate (not UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checked(text: str, name: str) -> str:
    """`text` if PostgreSQL can store it, else InvalidArgument naming the field `name`.

    For a gRPC handler to call before its query: the query would fail instead
    (UNKNOWN, as if the service were broken) on what is the caller's mistake.
    """
    if not storable(text):
        raise InvalidArgument(f"{name} must be text without NUL characters, in valid Unicode")
    return text


def shown(text: str) -> str:
    """`text` made storable to report it: a NUL or a lone surrogate becomes U+FFFD."""
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)
