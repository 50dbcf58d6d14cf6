"""Email addresses as the platform keeps and compares them: one normalization everywhere.

Every place an email enters (registration and sign-in at the gateway, the admin
command, identity's sign-in, the registration workflow's id) passes it through
`normalize`, so the stored form and every later lookup agree. Python and
PostgreSQL lowercase some Unicode differently (a capital sigma ending a word:
Python gives the final "ς", PostgreSQL the medial sigma U+03C3; the dotted "İ"),
so the comparison must never depend on which side lowercased: both sides see
the one form made here.
"""

from __future__ import annotations

import unicodedata

__all__ = ["normalize"]


def normalize(email: str) -> str:
    """Surrounding whitespace stripped, Unicode NFC, Python's `str.lower()`, NFC again.

    Lowering can undo composition ("J" + combining caron has no precomposed capital,
    its lower case "j" + caron has: U+01F0), so NFC is applied after it too: the
    result is its own normalization, as it must be where an email is normalized
    twice (the gateway, then identity).

    An ASCII email comes out exactly as `email.strip().lower()` did before this
    function existed (NFC leaves ASCII alone), so ids derived from one are unchanged.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", email.strip()).lower())
