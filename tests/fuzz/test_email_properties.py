"""Properties of the email normalization (agora/emails.py).

An email is normalized wherever it enters and again further in (the gateway, then
identity), so normalizing must be idempotent: a second pass that changed the form
would look up another string than registration stored.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from agora import emails
from tests.fuzz.settings import PROPERTY

# Letters of every case and the combining marks lowering can leave uncomposed, mixed
# with anything else a client may type (lone surrogates are refused earlier).
LETTERS_AND_MARKS = st.characters(categories=["Lu", "Ll", "Lt", "Lo", "Mn", "Mc", "Zs"])
ANY = st.characters(exclude_categories=["Cs"])
EMAILS = st.one_of(st.text(LETTERS_AND_MARKS, max_size=24), st.text(ANY, max_size=24))


@PROPERTY
@given(EMAILS)
@example("J\u030cosef@example.cz")  # "J" + caron: lowered, it composes to U+01F0
def test_normalizing_twice_changes_nothing(email: str) -> None:
    normal = emails.normalize(email)
    assert emails.normalize(normal) == normal


@PROPERTY
@given(st.text(st.characters(max_codepoint=0x7F), max_size=24))
def test_an_ascii_email_normalizes_as_strip_lower(email: str) -> None:
    # Ids derived from ASCII emails before normalization existed stay the same.
    assert emails.normalize(email) == email.strip().lower()
