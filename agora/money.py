"""Amounts, in minor units of their currency (cents), as every service bounds them."""

from __future__ import annotations

# The largest amount payments takes, so the largest order total and refund: far above
# any real payment, far below PostgreSQL's bigint and int64 (sums of refunds fit). An
# amount beyond it is refused as invalid, never left to fail in a database (retried as
# if transient) or at payments after the order was accepted.
MAX_AMOUNT_MINOR = 10**15

# ISO 4217 minor-unit exponents of the currencies the store sells in (the catalog's
# CURRENCIES): an amount in minor units is 10**exponent times one in major units.
MINOR_UNIT_EXPONENTS: dict[str, int] = {
    "EUR": 2,
    "USD": 2,
    "GBP": 2,
    "CHF": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "CZK": 2,
    "CAD": 2,
    "AUD": 2,
    "JPY": 0,
}
# ISO 4217's most common exponent, for a code outside the table.
DEFAULT_MINOR_UNIT_EXPONENT = 2


def minor_unit_exponent(currency: str) -> int:
    """How many decimal places `currency`'s minor unit has (JPY 0, EUR 2)."""
    return MINOR_UNIT_EXPONENTS.get(currency, DEFAULT_MINOR_UNIT_EXPONENT)
