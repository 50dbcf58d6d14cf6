"""Card numbers where they must not be: found before a value is stored anywhere.

A card number (PAN) is 12-19 digits whose last one is the Luhn check digit. People
paste them with spaces, dashes or dots between the groups, and with more beside them
(an expiry, a CVC, a word). `holds_card_number` looks for one anywhere in a string;
it is what keeps a pasted number out of an order's workflow input, and so out of
Temporal's history (gateway/schemas_orders.py).
"""

from __future__ import annotations

import re

MIN_DIGITS, MAX_DIGITS = 12, 19
# Runs of ASCII digits with whatever people type between a card's groups: anything
# but a letter ("4242 4242…", "4242-4242…", "4242/4242…", "4242_4242…").
_DIGIT_RUN = re.compile(r"[0-9]+(?:[^0-9A-Za-z]+[0-9]+)*")
_GROUP = re.compile(r"[0-9]+")


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in reversed(number)]
    total = sum(digits[0::2]) + sum(sum(divmod(2 * d, 10)) for d in digits[1::2])
    return total % 10 == 0


def holds_card_number(text: str) -> bool:
    """True when `text` holds a Luhn-valid 12-19 digit number: on its own, as
    consecutive groups of a separated run ("4242 4242 4242 4242 12/30"), or with more
    digits stuck to either end ("42424242424242421230", "pan:4242424242424242123"):
    any 12-19 digits of a run that begin where a group begins or end where one ends.
    A run of digits inside a token (e.g. a nonce) is one only if it passes the same test."""
    for run in _DIGIT_RUN.finditer(text):
        groups = _GROUP.findall(run.group())
        digits = "".join(groups)
        edges, at = {0}, 0
        for group in groups:
            at += len(group)
            edges.add(at)
        for start in range(len(digits) - MIN_DIGITS + 1):
            for end in range(start + MIN_DIGITS, min(start + MAX_DIGITS, len(digits)) + 1):
                if (start in edges or end in edges) and luhn_valid(digits[start:end]):
                    return True
    return False
